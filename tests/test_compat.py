"""What differs between ComfyUI releases lives in nodes/compat.py and nowhere else, and compat
holds nothing but that; the declared ComfyUI range is the one the code checks; members on
other devices."""
from __future__ import annotations

import ast
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from support.comfy_env import REPO_ROOT, run_node
from support.sampling import amdm, amdm_sampler, model_a, model_b, prompts  # noqa: F401

# Top-level modules that belong to ComfyUI (besides the comfy package itself).
COMFY_MODULES = {"comfy", "comfy_extras", "comfy_api", "comfy_execution", "latent_preview",
                 "folder_paths", "server", "nodes", "node_helpers", "execution",
                 "comfyui_version"}
# Calls that probe what a release has: only compat may make them.
PROBES = {"hasattr", "signature", "getfullargspec"}
# Keys under which only some releases keep a feature (model_options of 0.28's multi-GPU
# sampling): looking one up is a probe too.
RELEASE_ONLY_KEYS = {"multigpu_clones", "multigpu_thread_pool"}
# What makes a compat function more than an alias: it asks what the release has.
FEATURE_DETECTION = PROBES | {"getattr", "_accepts", "inspect"}
COMPAT = REPO_ROOT / "nodes" / "compat.py"


def _pack_sources() -> list[Path]:
    return [REPO_ROOT / "__init__.py", *sorted((REPO_ROOT / "nodes").glob("*.py"))]


def _comfy_names(tree: ast.AST) -> set[str]:
    """The names a module binds to ComfyUI modules (import comfy.x; import nodes as y)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names
                      if a.name.split(".")[0] in COMFY_MODULES}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] in COMFY_MODULES:
            names |= {a.asname or a.name for a in node.names}
    return names


def _rooted_in(node: ast.AST, names: set[str]) -> bool:
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return isinstance(node, ast.Name) and node.id in names


def _version_probes(source: str) -> list[str]:
    """Feature detection and private ComfyUI names in a module: probe calls (hasattr,
    inspect.signature), getattr with a default on something of ComfyUI, lookups of keys only
    some releases set, imports of private names from ComfyUI, and ``_private`` attributes of
    ComfyUI modules."""
    tree = ast.parse(source)
    comfy_names = _comfy_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else \
                node.func.attr if isinstance(node.func, ast.Attribute) else ""
            if name in PROBES:
                found.append(f"{name}() (line {node.lineno})")
            elif name == "getattr" and len(node.args) == 3 and _rooted_in(node.args[0], comfy_names):
                found.append(f"getattr with a default (line {node.lineno})")
        elif isinstance(node, ast.Constant) and node.value in RELEASE_ONLY_KEYS:
            found.append(f"{node.value!r} (line {node.lineno})")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] in COMFY_MODULES:
            found += [f"from {node.module} import {a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") \
                and _rooted_in(node.value, comfy_names):
            found.append(f".{node.attr} (line {node.lineno})")
    return found


def test_only_compat_detects_what_a_release_has():
    assert _version_probes(COMPAT.read_text(encoding="utf-8")), "the scan must see compat's own probes"
    elsewhere = {path.name: probes for path in _pack_sources() if path != COMPAT
                 for probes in [_version_probes(path.read_text(encoding="utf-8"))] if probes}
    assert elsewhere == {}


def test_the_probe_scan_sees_a_lookup_of_a_release_only_key():
    source = 'def clones(guider):\n    return guider.model_options.get("multigpu_clones", {})\n'
    assert _version_probes(source) == ["'multigpu_clones' (line 2)"]
    assert _version_probes('pool = options["multigpu_thread_pool"]\n') == ["'multigpu_thread_pool' (line 1)"]
    assert _version_probes('has = "multigpu_clones" in options\n') == ["'multigpu_clones' (line 1)"]


def _aliases(source: str) -> list[str]:
    """Functions whose body (docstring aside) is one ``return`` of an attribute, call or
    subscript chain rooted at a parameter or a ComfyUI module, asking nothing of the release
    (no getattr, hasattr, _accepts or inspect): another name for what the caller could
    write itself."""
    tree = ast.parse(source)
    comfy_names = _comfy_names(tree)
    aliases = []
    for function in (node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))):
        body = [statement for statement in function.body
                if not (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant))]
        if len(body) != 1 or not isinstance(body[0], ast.Return):
            continue
        value = body[0].value
        arguments = function.args
        parameters = {a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
                                      arguments.vararg, arguments.kwarg) if a is not None}
        if not isinstance(value, (ast.Attribute, ast.Call, ast.Subscript)) or \
                not _rooted_in(value, parameters | comfy_names):
            continue
        named = {node.id for node in ast.walk(value) if isinstance(node, ast.Name)} | \
            {node.attr for node in ast.walk(value) if isinstance(node, ast.Attribute)}
        if not named & FEATURE_DETECTION:
            aliases.append(function.name)
    return aliases


def test_the_alias_rule_sees_aliases_of_parameters_and_of_comfyui():
    source = textwrap.dedent('''
        import comfy.model_management

        def guider_model(g):
            return g.model_patcher

        def f(x):
            """A docstring does not count."""
            return comfy.model_management.foo(x)

        def options(guider):
            return guider.model_options["transformer_options"]

        def detected(x):
            return comfy.model_management.foo(x, getattr(x, "seed", None))

        def accepted(f, x):
            return f(x, **({"seed": 1} if _accepts(f, "seed") else {}))

        def probed(f):
            return f(inspect.signature(f))

        def computed(x):
            y = x.model
            return y.size
        ''')
    assert _aliases(source) == ["guider_model", "f", "options"]


def test_compat_holds_no_one_statement_aliases():
    """Every function of compat detects something (a probe, a fallback, an import that may
    fail) or does more than return one expression of its parameters or of ComfyUI."""
    assert _aliases(COMPAT.read_text(encoding="utf-8")) == []


def test_the_declared_comfyui_range_is_the_checked_one(pack):
    import tomllib

    from comfyui_amdm.nodes import compat
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["comfy"]
    assert declared["requires-comfyui"] == compat.SUPPORTED_COMFYUI
    assert compat.in_supported_range(compat.running_comfyui_version())
    for version in ("0.3.64", "0.28.0"):  # the releases the suite runs on
        assert compat.in_supported_range(version)
    assert not compat.in_supported_range("0.3.63")
    assert not compat.in_supported_range("0.28.1")


def test_an_unsupported_comfyui_gets_one_warning_at_import(pack):
    """The pack imported into a ComfyUI that reports another version logs the warning
    once; the running (supported) one logs nothing."""
    code = (
        "import logging, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "logging.basicConfig(level=logging.WARNING, format='%(name)s|%(message)s')\n"
        "from support import comfy_env\n"
        "comfy_env.setup_comfy_in_process()\n"
        "import comfyui_version\n"
        "if sys.argv[2] != 'running': comfyui_version.__version__ = sys.argv[2]\n"
        "comfy_env.load_pack()\n")

    def import_log(version: str) -> str:
        result = subprocess.run([sys.executable, "-c", code, str(REPO_ROOT / "tests"), version],
                                capture_output=True, text=True, timeout=300, cwd="/")
        assert result.returncode == 0, result.stderr[-2000:]
        return "\n".join(line for line in result.stderr.splitlines() if "comfyui_amdm" in line)

    from comfyui_amdm.nodes import compat
    assert "declares ComfyUI" not in import_log("running")
    warned = import_log("0.40.2")
    assert warned.count(f"comfyui-amdm declares ComfyUI {compat.SUPPORTED_COMFYUI} and found 0.40.2") == 1


def test_a_member_naming_the_cpu_by_index_is_on_the_targets_device(amdm, model_a, model_b,
                                                                     prompts, fixture_files):
    """cpu:0 and cpu name one device: a member loading on cpu:0 beside a target on cpu is
    stepped as on the target's device (the result is the same), and a LoRA clone of the
    target loading on cpu:0 is not refused as a clone on another device. (Moving latents
    to a GPU member and gathering its proposal cannot be observed on a CPU: tensors on
    cpu:0 report cpu.)"""
    Member, Schedule = amdm
    elsewhere = model_b.clone()
    elsewhere.load_device = torch.device("cpu", 0)
    target = Member(model_a, prompts["red"], prompts["empty"], 7.0)
    schedule = Schedule(end_percent=0.6)
    here = amdm_sampler([target, Member(model_b, prompts["blue"], prompts["empty"], 5.0)],
                        schedule, "euler")
    there = amdm_sampler([target, Member(elsewhere, prompts["blue"], prompts["empty"], 5.0)],
                         schedule, "euler")
    torch.testing.assert_close(there, here, rtol=1e-5, atol=1e-5)
    lora_clone = run_node("LoraLoaderModelOnly", model=model_b,
                          lora_name=fixture_files["lora"].name, strength_model=1.0)[0]
    lora_clone.load_device = torch.device("cpu", 0)
    amdm_sampler([Member(model_b, prompts["red"], prompts["empty"], 7.0),
                  Member(lora_clone, prompts["blue"], prompts["empty"], 5.0)], schedule, "euler")


def test_clones_of_one_checkpoint_on_two_devices_are_refused(amdm, model_a, prompts,
                                                             fixture_files):
    """One set of weights cannot live on two devices: refused before sampling, saying
    what to do."""
    Member, Schedule = amdm
    lora_clone = run_node("LoraLoaderModelOnly", model=model_a,
                          lora_name=fixture_files["lora"].name, strength_model=1.0)[0]
    lora_clone.load_device = torch.device("meta")
    members = [Member(model_a, prompts["red"], prompts["empty"], 7.0),
               Member(lora_clone, prompts["blue"], prompts["empty"], 5.0, name="style")]
    with pytest.raises(ValueError, match="AMDMSampler: member 1 and member 2 \\('style'\\) are "
                                         "clones of one checkpoint .* load on cpu and meta: "
                                         "load the checkpoint once per device"):
        amdm_sampler(members, Schedule(), "euler")
