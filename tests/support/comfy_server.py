"""A real ComfyUI server process with this pack installed, driven over HTTP (stdlib only)."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

from . import comfy_env, fixture_models

logger = logging.getLogger(__name__)

PACK_NODE_PROBE = "AMDMSampler"  # present in /object_info only if the pack imported
# Test-only nodes beside the pack: attention patches written the way other packs write theirs.
PATCH_NODES = "amdm_test_patch_nodes"
PATCH_NODES_DIR = Path(__file__).resolve().parent / "patch_nodes"
# What ComfyUI logs for one of its own files, or a custom node, that failed to import.
IMPORT_FAILURE = re.compile(r"IMPORT FAILED|^Cannot import ")


class ComfyServerError(RuntimeError):
    """The server rejected a prompt, failed to run it, or is not running."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyServer:
    """``python3 main.py --cpu`` on a free port, with its own base directory:

    ``base_dir/custom_nodes/comfyui-amdm`` -> this repository, ``base_dir/models`` populated
    with the fixture models, and ``input/``, ``output/``, ``temp/``, ``user/``. All of the
    server's output goes to ``log_path``. ``extra_args`` are appended to ComfyUI's command
    line (``--front-end-root <dir>`` serves another frontend). ``node_packs`` are other
    custom node directories, linked into ``custom_nodes`` under their own names.
    """

    def __init__(self, base_dir: Path, log_path: Path, port: int | None = None,
                 extra_args: Sequence[str] = (), node_packs: Sequence[Path] = ()) -> None:
        self.base_dir = Path(base_dir)
        self.log_path = Path(log_path)
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.comfy_dir = comfy_env.find_comfyui()
        self.models_dir = self.base_dir / "models"
        self.input_dir = self.base_dir / "input"
        self.output_dir = self.base_dir / "output"
        self.custom_nodes_dir = self.base_dir / "custom_nodes"
        self.extra_args = tuple(extra_args)
        self.node_packs = tuple(Path(pack) for pack in node_packs)
        self._process: subprocess.Popen | None = None
        self._log_handle = None
        self._object_info: dict | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 180.0) -> "ComfyServer":
        for folder in (self.models_dir, self.input_dir, self.output_dir, self.custom_nodes_dir,
                       self.base_dir / "temp", self.base_dir / "user"):
            folder.mkdir(parents=True, exist_ok=True)
        fixture_models.populate_models_dir(self.models_dir)
        for name, directory in ((comfy_env.PACK_DIR_NAME, comfy_env.REPO_ROOT), (PATCH_NODES, PATCH_NODES_DIR),
                                *((pack.name, pack) for pack in self.node_packs)):
            link = self.custom_nodes_dir / name
            if not link.is_symlink():
                link.symlink_to(directory, target_is_directory=True)

        command = [
            sys.executable, "main.py", *comfy_env.COMFY_TEST_FLAGS,
            "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir),
            # ComfyUI's default database file lives inside the ComfyUI tree.
            "--database-url", "sqlite:///:memory:",
            # API nodes call out to api.comfy.org when used; nothing here may touch the network.
            "--disable-api-nodes",
            "--disable-auto-launch",
            *self.extra_args,
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_handle = open(self.log_path, "w", encoding="utf-8")
        env = comfy_env.server_environment(self.comfy_dir, dict(
            os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
        started = time.perf_counter()
        self._process = subprocess.Popen(
            command, cwd=self.comfy_dir, stdout=self._log_handle, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )
        deadline = started + timeout
        while True:
            if self._process.poll() is not None:
                raise ComfyServerError(
                    f"ComfyUI exited with code {self._process.returncode} during start-up; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                self._object_info = self._request("GET", "/object_info", timeout=10)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                if time.perf_counter() > deadline:
                    self.stop()
                    raise ComfyServerError(
                        f"ComfyUI did not answer /object_info within {timeout:.0f}s; "
                        f"log {self.log_path}:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.25)
        self.startup_seconds = time.perf_counter() - started
        logger.info("ComfyUI server up on %s after %.1fs", self.url, self.startup_seconds)
        failed = [line for line in self.log_text().splitlines() if IMPORT_FAILURE.search(line)]
        if failed:
            self.stop()
            raise ComfyServerError(
                "ComfyUI started, but some of its modules or custom nodes did not import (run "
                "`bash scripts/setup.sh`):\n" + "\n".join(failed)
                + f"\n{self.pack_import_error() or ''}\nlog {self.log_path}"
            )
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # ------------------------------------------------------------------ HTTP

    def _request(self, method: str, path: str, payload: Any = None, timeout: float = 30.0) -> Any:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
        return json.loads(body) if body else None

    def get_json(self, path: str, timeout: float = 30.0) -> Any:
        return self._request("GET", path, timeout=timeout)

    def post_json(self, path: str, payload: Any, timeout: float = 30.0) -> Any:
        return self._request("POST", path, payload, timeout=timeout)

    def object_info(self, refresh: bool = False) -> dict:
        if refresh or self._object_info is None:
            self._object_info = self.get_json("/object_info")
        return self._object_info

    def queue(self, prompt: dict, client_id: str | None = None) -> str:
        """POST an API-format prompt to /prompt and return its prompt_id.

        Raises ComfyServerError carrying the server's error body when validation fails.
        """
        payload = {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex}
        try:
            answer = self.post_json("/prompt", payload)
        except urllib.error.HTTPError as error:
            body = error.read().decode("utf-8", errors="replace")
            try:
                body = json.dumps(json.loads(body), indent=1)
            except ValueError:
                pass
            raise ComfyServerError(f"/prompt answered {error.code}:\n{body}") from None
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 120.0) -> dict:
        """Poll /history until ``prompt_id`` is done and return its history entry.

        Raises ComfyServerError with the execution error's node, message and traceback if the
        prompt failed, and on timeout or a dead server.
        """
        deadline = time.perf_counter() + timeout
        quoted = urllib.parse.quote(prompt_id)
        while True:
            history = self.get_json(f"/history/{quoted}")
            entry = history.get(prompt_id) if history else None
            if entry is not None and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") == "error" or not status.get("completed"):
                    raise ComfyServerError(f"prompt {prompt_id} failed:\n{self._describe_failure(status)}")
                return entry
            if not self.running:
                raise ComfyServerError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            if time.perf_counter() > deadline:
                queue = self.get_json("/queue")
                raise ComfyServerError(
                    f"prompt {prompt_id} not done after {timeout:.0f}s; queue: "
                    f"{len(queue.get('queue_running', []))} running, {len(queue.get('queue_pending', []))} pending\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.1)

    def run(self, prompt: dict, timeout: float = 120.0) -> dict:
        """queue() then wait(): the history entry of a completed prompt."""
        return self.wait(self.queue(prompt), timeout=timeout)

    @staticmethod
    def _describe_failure(status: dict) -> str:
        parts = []
        for event, data in status.get("messages", []):
            if event in ("execution_error", "execution_interrupted"):
                parts.append(
                    f"{event} in node {data.get('node_id')} ({data.get('node_type')}): "
                    f"{data.get('exception_type', '')}: {data.get('exception_message', '')}\n"
                    + "".join(data.get("traceback", []))
                )
        return "\n".join(parts) or json.dumps(status, indent=1)

    def output_images(self, history_entry: dict) -> list[Path]:
        """Files that the entry's output nodes wrote to the output directory."""
        paths = []
        for node_output in history_entry.get("outputs", {}).values():
            for image in node_output.get("images", []):
                if image.get("type") == "output":
                    paths.append(self.output_dir / image.get("subfolder", "") / image["filename"])
        return paths

    # ------------------------------------------------------------------ the pack

    def pack_loaded(self) -> bool:
        return PACK_NODE_PROBE in self.object_info(refresh=True)

    def pack_import_error(self, dir_name: str = comfy_env.PACK_DIR_NAME) -> str | None:
        """ComfyUI's log lines about a failed import of the node pack in ``custom_nodes/<dir_name>``
        (this pack by default), or None."""
        lines = self.log_text().splitlines()
        marker = f"{dir_name} module for custom nodes"
        for index, line in enumerate(lines):
            # Newer releases prefix each line with its level (and colours).
            if "Cannot import" in line and marker in line:
                start = index
                while start > max(index - 400, 0) and "Traceback (most recent call last)" not in lines[start]:
                    start -= 1
                return "\n".join(lines[start: index + 1])
        return None

    def require_pack(self) -> None:
        """Raise ComfyServerError with ComfyUI's import traceback unless the pack's nodes are registered."""
        if not self.pack_loaded():
            raise ComfyServerError(
                f"the pack's nodes are not registered ({PACK_NODE_PROBE} missing from /object_info); "
                f"import error:\n{self.pack_import_error() or self.log_tail()}"
            )


@contextmanager
def serving_the_pack(base_dir: Path, log_path: Path, extra_args: Sequence[str] = (),
                     node_packs: Sequence[Path] = ()) -> Iterator[ComfyServer]:
    """A started server whose pack registered its nodes (else the pack's import error),
    stopped on exit."""
    server = ComfyServer(base_dir, log_path, extra_args=extra_args, node_packs=node_packs)
    server.start()
    try:
        server.require_pack()
        yield server
    finally:
        server.stop()
