// Pure schedule arithmetic for the AMDM graph view: no DOM, no ComfyUI imports, so the
// browser tests can import it on its own and compare it with the Python side.
//
// The sigma arithmetic mirrors ComfyUI's discrete (SD1.x / SD2.x / SDXL) model sampling:
// a 1000-step scaled-linear beta schedule, ComfyUI's schedulers and its percent_to_sigma
// convention. Other model families get the same curves on this table, which is the
// closest the browser can get without asking the server.

const TRAINING_STEPS = 1000;

let discreteSigmaTable = null;

/** Sigma for every training timestep 0..999, as ModelSamplingDiscrete builds it (float32). */
export function discreteSigmas() {
  if (discreteSigmaTable) return discreteSigmaTable;
  const start = Math.sqrt(0.00085);
  const end = Math.sqrt(0.012);
  const sigmas = new Float64Array(TRAINING_STEPS);
  let alphasCumprod = 1.0;
  for (let i = 0; i < TRAINING_STEPS; i++) {
    const root = start + ((end - start) * i) / (TRAINING_STEPS - 1);
    alphasCumprod *= 1.0 - root * root;
    sigmas[i] = Math.fround(Math.sqrt((1.0 - alphasCumprod) / alphasCumprod));
  }
  discreteSigmaTable = sigmas;
  return sigmas;
}

/** ModelSamplingDiscrete.sigma(t): log-linear interpolation of the table. */
export function sigmaAtTimestep(timestep) {
  const table = discreteSigmas();
  const t = Math.min(Math.max(timestep, 0), TRAINING_STEPS - 1);
  const low = Math.floor(t);
  const high = Math.ceil(t);
  const w = t - low;
  const logSigma = (1 - w) * Math.log(table[low]) + w * Math.log(table[high]);
  return Math.exp(logSigma);
}

/** ModelSamplingDiscrete.timestep(sigma): index of the nearest table entry in log space. */
export function timestepOfSigma(sigma) {
  const table = discreteSigmas();
  const logSigma = Math.log(sigma);
  let best = 0;
  let bestDistance = Infinity;
  for (let i = 0; i < table.length; i++) {
    const distance = Math.abs(logSigma - Math.log(table[i]));
    if (distance < bestDistance) {
      bestDistance = distance;
      best = i;
    }
  }
  return best;
}

/** ComfyUI's model_sampling.percent_to_sigma for discrete models. */
export function percentToSigma(percent) {
  if (percent <= 0.0) return 999999999.9;
  if (percent >= 1.0) return 0.0;
  return sigmaAtTimestep((1.0 - percent) * 999.0);
}

function linspace(start, end, count) {
  if (count === 1) return [start];
  const out = [];
  for (let i = 0; i < count; i++) out.push(start + ((end - start) * i) / (count - 1));
  return out;
}

// Regularised incomplete beta function (continued fraction), for the "beta" scheduler's
// inverse CDF.
function logGamma(x) {
  const g = [76.18009172947146, -86.50532032941677, 24.01409824083091,
    -1.231739572450155, 0.1208650973866179e-2, -0.5395239384953e-5];
  let y = x;
  const tmp = x + 5.5 - (x + 0.5) * Math.log(x + 5.5);
  let series = 1.000000000190015;
  for (const c of g) series += c / ++y;
  return -tmp + Math.log((2.5066282746310005 * series) / x);
}

function betaContinuedFraction(x, a, b) {
  const tiny = 1e-300;
  let c = 1.0;
  let d = 1.0 - ((a + b) * x) / (a + 1.0);
  if (Math.abs(d) < tiny) d = tiny;
  d = 1.0 / d;
  let h = d;
  for (let m = 1; m <= 300; m++) {
    const m2 = 2 * m;
    let aa = (m * (b - m) * x) / ((a + m2 - 1) * (a + m2));
    d = 1.0 + aa * d;
    if (Math.abs(d) < tiny) d = tiny;
    c = 1.0 + aa / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1.0 / d;
    h *= d * c;
    aa = (-(a + m) * (a + b + m) * x) / ((a + m2) * (a + m2 + 1));
    d = 1.0 + aa * d;
    if (Math.abs(d) < tiny) d = tiny;
    c = 1.0 + aa / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1.0 / d;
    const delta = d * c;
    h *= delta;
    if (Math.abs(delta - 1.0) < 1e-15) break;
  }
  return h;
}

function betaCdf(x, a, b) {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const front = Math.exp(logGamma(a + b) - logGamma(a) - logGamma(b)
    + a * Math.log(x) + b * Math.log(1 - x));
  if (x < (a + 1) / (a + b + 2)) return (front * betaContinuedFraction(x, a, b)) / a;
  return 1 - (front * betaContinuedFraction(1 - x, b, a)) / b;
}

function betaPpf(q, a, b) {
  let low = 0;
  let high = 1;
  for (let i = 0; i < 100; i++) {
    const mid = (low + high) / 2;
    if (betaCdf(mid, a, b) < q) low = mid;
    else high = mid;
  }
  return (low + high) / 2;
}

const SCHEDULERS = {
  simple(steps) {
    const table = discreteSigmas();
    const stride = table.length / steps;
    const sigmas = [];
    for (let x = 0; x < steps; x++) sigmas.push(table[table.length - 1 - Math.trunc(x * stride)]);
    sigmas.push(0);
    return sigmas;
  },
  sgm_uniform(steps) {
    return normalSchedule(steps, true);
  },
  normal(steps) {
    return normalSchedule(steps, false);
  },
  karras(steps) {
    const table = discreteSigmas();
    return karrasSigmas(steps, table[0], table[table.length - 1], 7.0);
  },
  exponential(steps) {
    const table = discreteSigmas();
    return exponentialSigmas(steps, table[0], table[table.length - 1]);
  },
  ddim_uniform(steps) {
    const table = discreteSigmas();
    const sigmas = [0.0];
    const stride = Math.max(Math.floor(table.length / steps), 1);
    for (let x = 1; x < table.length; x += stride) sigmas.push(table[x]);
    return sigmas.reverse();
  },
  beta(steps) {
    const table = discreteSigmas();
    const total = table.length - 1;
    const sigmas = [];
    let last = -1;
    for (let i = 0; i < steps; i++) {
      const t = Math.round(betaPpf(1 - i / steps, 0.6, 0.6) * total);
      if (t !== last) sigmas.push(table[t]);
      last = t;
    }
    sigmas.push(0);
    return sigmas;
  },
  linear_quadratic(steps) {
    const table = discreteSigmas();
    const sigmaMax = table[table.length - 1];
    if (steps === 1) return [sigmaMax, 0];
    const threshold = 0.025;
    const linearSteps = Math.floor(steps / 2);
    const schedule = [];
    for (let i = 0; i < linearSteps; i++) schedule.push((i * threshold) / linearSteps);
    const stepDiff = linearSteps - threshold * steps;
    const quadraticSteps = steps - linearSteps;
    const quadraticCoef = stepDiff / (linearSteps * quadraticSteps ** 2);
    const linearCoef = threshold / linearSteps - (2 * stepDiff) / quadraticSteps ** 2;
    const constant = quadraticCoef * linearSteps ** 2;
    for (let i = linearSteps; i < steps; i++) {
      schedule.push(quadraticCoef * i * i + linearCoef * i + constant);
    }
    schedule.push(1.0);
    return schedule.map((x) => (1.0 - x) * sigmaMax);
  },
  kl_optimal(steps) {
    const table = discreteSigmas();
    const sigmaMin = table[0];
    const sigmaMax = table[table.length - 1];
    const sigmas = [];
    for (let i = 0; i < steps; i++) {
      const a = steps === 1 ? 0 : i / (steps - 1);
      sigmas.push(Math.tan(a * Math.atan(sigmaMin) + (1 - a) * Math.atan(sigmaMax)));
    }
    sigmas.push(0);
    return sigmas;
  },
};

function normalSchedule(steps, sgm) {
  const table = discreteSigmas();
  const start = timestepOfSigma(table[table.length - 1]);
  const end = timestepOfSigma(table[0]);
  let timesteps;
  let appendZero = true;
  if (sgm) {
    timesteps = linspace(start, end, steps + 1).slice(0, -1);
  } else if (Math.abs(sigmaAtTimestep(end)) <= 0.00001) {
    timesteps = linspace(start, end, steps + 1);
    appendZero = false;
  } else {
    timesteps = linspace(start, end, steps);
  }
  const sigmas = timesteps.map((t) => sigmaAtTimestep(t));
  if (appendZero) sigmas.push(0);
  return sigmas;
}

export function karrasSigmas(steps, sigmaMin, sigmaMax, rho) {
  const minInvRho = sigmaMin ** (1 / rho);
  const maxInvRho = sigmaMax ** (1 / rho);
  const sigmas = linspace(0, 1, steps).map((r) => (maxInvRho + r * (minInvRho - maxInvRho)) ** rho);
  sigmas.push(0);
  return sigmas;
}

export function exponentialSigmas(steps, sigmaMin, sigmaMax) {
  const sigmas = linspace(Math.log(sigmaMax), Math.log(sigmaMin), steps).map(Math.exp);
  sigmas.push(0);
  return sigmas;
}

export function polyexponentialSigmas(steps, sigmaMin, sigmaMax, rho) {
  const logMin = Math.log(sigmaMin);
  const logMax = Math.log(sigmaMax);
  const sigmas = linspace(1, 0, steps).map((r) => Math.exp(r ** rho * (logMax - logMin) + logMin));
  sigmas.push(0);
  return sigmas;
}

const ALIGN_YOUR_STEPS_LEVELS = {
  SD1: [14.6146412293, 6.4745760956, 3.8636745985, 2.694615152, 1.8841921177, 1.3943805092,
    0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582],
  SDXL: [14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
    0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582],
  SVD: [700.0, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002],
};

/** AlignYourStepsScheduler node: tabulated levels, log-linearly resampled to steps + 1. */
export function alignYourStepsSigmas(modelType, steps, denoise) {
  let totalSteps = steps;
  if (denoise < 1.0) {
    if (denoise <= 0.0) return [];
    totalSteps = Math.round(steps * denoise);
  }
  let levels = (ALIGN_YOUR_STEPS_LEVELS[modelType] ?? ALIGN_YOUR_STEPS_LEVELS.SD1).slice();
  if (steps + 1 !== levels.length) {
    const logs = levels.slice().reverse().map(Math.log);
    const xs = linspace(0, 1, logs.length);
    levels = linspace(0, 1, steps + 1).map((x) => {
      let i = Math.min(xs.length - 2, Math.max(0, Math.floor(x * (xs.length - 1))));
      const w = (x - xs[i]) / (xs[i + 1] - xs[i]);
      return Math.exp(logs[i] + w * (logs[i + 1] - logs[i]));
    }).reverse();
  }
  const sigmas = levels.slice(-(totalSteps + 1));
  sigmas[sigmas.length - 1] = 0;
  return sigmas;
}

export const SCHEDULER_NAMES = Object.keys(SCHEDULERS);

/** comfy.samplers.calculate_sigmas for one of ComfyUI's named schedulers. */
export function schedulerSigmas(scheduler, steps) {
  const handler = SCHEDULERS[scheduler] ?? SCHEDULERS.simple;
  return handler(steps);
}

// Samplers for which KSampler computes one extra sigma and drops the penultimate one.
const DISCARD_PENULTIMATE_SIGMA_SAMPLERS = new Set(["dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"]);

/** The sigmas a KSampler-style node (and AMDMSampler) samples with. */
export function ksamplerSigmas(scheduler, steps, denoise = 1.0, samplerName = "") {
  const discard = DISCARD_PENULTIMATE_SIGMA_SAMPLERS.has(samplerName);
  const compute = (n) => {
    const sigmas = schedulerSigmas(scheduler, discard ? n + 1 : n);
    if (discard) sigmas.splice(sigmas.length - 2, 1);
    return sigmas;
  };
  if (denoise == null || denoise > 0.9999) return compute(steps);
  if (denoise <= 0.0) return [];
  return compute(Math.trunc(steps / denoise)).slice(-(steps + 1));
}

/** BasicScheduler node: like KSampler, without the penultimate-sigma rule. */
export function basicSchedulerSigmas(scheduler, steps, denoise = 1.0) {
  if (denoise >= 1.0) return schedulerSigmas(scheduler, steps);
  if (denoise <= 0.0) return [];
  return schedulerSigmas(scheduler, Math.trunc(steps / denoise)).slice(-(steps + 1));
}

/**
 * Steps k (0-based, step k goes sigmas[k] -> sigmas[k+1]) inside the aggregation window:
 * sigma(end_percent) < sigmas[k] <= sigma(start_percent), and start_step <= k < end_step.
 * With decreasing sigmas those steps are consecutive; otherwise the window is their first run.
 */
export function windowSteps(sigmas, schedule) {
  const sigmaStart = percentToSigma(schedule.start_percent);
  const sigmaEnd = percentToSigma(schedule.end_percent);
  const startStep = schedule.start_step ?? 0;
  const endStep = schedule.end_step ?? 10000;
  const inside = (k) => sigmas[k] > sigmaEnd && sigmas[k] <= sigmaStart && k >= startStep && k < endStep;
  const stepCount = Math.max(sigmas.length - 1, 0);
  const steps = [];
  let k = 0;
  while (k < stepCount && !inside(k)) k++;
  while (k < stepCount && inside(k)) steps.push(k++);
  return steps;
}

/** The weight factor of the non-target members at the j-th of n window steps. */
export function curveFactor(curve, j, n) {
  const t = n > 0 ? j / n : 0;
  if (curve === "linear_decay") return 1 - t;
  if (curve === "cosine_decay") return (1 + Math.cos(Math.PI * t)) / 2;
  return 1;
}

/**
 * Per step, each member's share of the aggregated latent.
 * members: [{weight}], targetIndex: 0-based. Returns rows[k][m]. Outside the window only
 * the target runs (share 1). Inside: linear and slerp blend with a / sum(a), the paper's
 * rule with a / ||a||_2.
 */
export function memberShares(stepCount, window, members, targetIndex, schedule) {
  const position = new Map(window.map((k, j) => [k, j]));
  const rows = [];
  for (let k = 0; k < stepCount; k++) {
    if (!position.has(k)) {
      rows.push(members.map((_, m) => (m === targetIndex ? 1 : 0)));
      continue;
    }
    const factor = curveFactor(schedule.weight_curve, position.get(k), window.length);
    const raw = members.map((member, m) => (m === targetIndex ? member.weight : member.weight * factor));
    let norm;
    if (schedule.aggregation === "paper") norm = Math.sqrt(raw.reduce((s, a) => s + a * a, 0));
    else norm = raw.reduce((s, a) => s + a, 0);
    rows.push(raw.map((a) => (norm > 0 ? a / norm : 0)));
  }
  return rows;
}
