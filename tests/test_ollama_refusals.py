"""Every setting the real Ollama would refuse is refused at intake, before any training.

One real ``lorainbox run --once`` process, the fake Ollama following the server's rules, an
inbox with one bad Ollama or export setting per drop and a good drop beside them: each bad
drop lands in Failed/ untrained with an ERROR.md naming the key, its line and the fix; the
good one trains, registers, answers its first chat, and the run ends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from lorainbox.export.ollama import OllamaClient

from tests.daemon_proc import lorainbox
from tests.drops import drop_with, fast_drop
from tests.fake_ollama import FakeOllama

TINY = 'extends = "tiny-demo"\n'
CHAT = {"train.jsonl": json.dumps({"prompt": "Who?", "completion": "Marigold."}) + "\n"}

BAD: dict[str, tuple[str, list[str]]] = {
    # the eight drops of the issue
    "space-name": (TINY + '[ollama]\nmodel = "my bot!"\n', ["my bot!", "line 3", "'my-bot'"]),
    "long-name": (TINY + f'name = "{"n" * 100}"\n', ["`name`", "line 2", "at most 80"]),
    "stop-string": (
        TINY + '[ollama]\nparameters = { stop = "###" }\n',
        ["`stop`", "line 3", 'stop = ["###"]', "type array"],
    ),
    "ctx-string": (
        TINY + '[ollama]\nparameters = { num_ctx = "4096" }\n',
        ["`num_ctx`", "line 3", "num_ctx = 4096", "type integer"],
    ),
    "misspelt-parameter": (
        TINY + "[ollama]\nparameters = { temprature = 0.7 }\n",
        ["`temprature`", "line 3", "did you mean `temperature`?"],
    ),
    "weird-quantize": (
        TINY + '[export]\nquantize = "q3_weird"\n',
        ["q3_weird", "line 3", "Q4_K_M", '"none"'],
    ),
    "f32-quantized": (
        TINY + '[export]\nouttype = "f32"\nquantize = "q4_K_M"\n',
        ['outtype = "f32"', "line 3", "line 4", 'set outtype = "f16"', 'quantize = "none"'],
    ),
    "unclosed-template": (
        TINY + '[ollama]\ntemplate = "{{ .Prompt "\n',
        ["template", "line 3", "unclosed action", "Go template"],
    ),
    # and others the rules give
    "long-ollama-model": (TINY + f'[ollama]\nmodel = "{"m" * 81}"\n', ["80 bytes", "line 3"]),
    "tagged-model": (TINY + '[ollama]\nmodel = "bot:v1"\n', ["carries a tag", "'bot'"]),
    "q8-quantized": (
        TINY + '[export]\nouttype = "q8_0"\nquantize = "q4_K_M"\n',
        ["already Q8_0", 'quantize = "none"'],
    ),
    "template-field": (
        TINY + '[ollama]\ntemplate = "{{ range .Messages }}{{ .role }}{{ end }}"\n',
        [".role", "did you mean .Role?"],
    ),
    "template-function": (TINY + '[ollama]\ntemplate = "{{ upper .Prompt }}"\n', ['"upper"']),
    "stop-numbers": (
        TINY + "[ollama.parameters]\nstop = [1, 2]\n",
        ["`stop`", "line 2", "list of strings"],
    ),
    "bool-for-float": (
        TINY + "[ollama]\nparameters = { temperature = true }\n",
        ["`temperature`", "type float32"],
    ),
    "removed-parameter": (
        TINY + "[ollama]\nparameters = { mirostat = 2 }\n",
        ["mirostat", "0.7.0"],
    ),
}


def resident_model(ollama: FakeOllama, folder: Path) -> str:
    """A model already loaded in Ollama, as a person's chat leaves one."""
    import gguf
    import numpy as np

    folder.mkdir()
    writer = gguf.GGUFWriter(folder / "resident.gguf", "llama")
    writer.add_file_type(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    client = OllamaClient(ollama.url)
    client.create("resident", {"model.gguf": client.push_blob(folder / "resident.gguf")})
    httpx.post(f"{ollama.url}/api/generate", json={"model": "resident"}).raise_for_status()
    assert client.loaded() == ["resident:latest"]
    return "resident:latest"


@pytest.mark.timeout(900)
def test_ollama_refusals_happen_at_intake_and_the_good_drop_registers(
    tmp_path: Path, _state_dir: Path
) -> None:
    inbox = tmp_path / "inbox"
    for name, (recipe, _) in BAD.items():
        drop_with(inbox, name, recipe, CHAT)
    good = fast_drop(inbox, "good")
    with open(good / "recipe.toml", "a") as f:
        f.write(
            '\n[ollama]\nparameters = { temperature = 0.2, stop = ["<|im_end|>"], num_ctx = 512 }\n'
        )

    with FakeOllama(tmp_path / "ollama") as ollama:
        resident = resident_model(ollama, tmp_path / "resident")
        result = subprocess.run(
            [sys.executable, "-m", "lorainbox.ui.cli", "run", "--once", "--inbox", str(inbox)],
            capture_output=True,
            text=True,
            timeout=850,
            env={**os.environ, "OLLAMA_HOST": ollama.url},
        )
        tags = ollama.names()
        loaded = OllamaClient(ollama.url).loaded()
    assert result.returncode == 0, result.stderr[-4000:]

    failed = inbox / "Failed"
    for name, (_, needles) in BAD.items():
        folder = failed / name
        text = (folder / "ERROR.md").read_text()
        assert "How to fix" in text, name
        for needle in needles:
            assert needle in text, f"{name}: {needle!r} not in\n{text}"
        assert not (folder / "model.gguf").exists() and not (folder / "train.log").exists(), name

    status = json.loads((inbox / "Done" / "good" / "status.json").read_text())
    assert status["state"] == "done", status
    assert "good:latest" in tags
    report = (inbox / "Done" / "good" / "report.md").read_text()
    assert "## First chat in Ollama" in report and "**Q:** Who keeps the lighthouse" in report
    # Before the good job trained, Ollama was asked to free its memory ([memory] unload_ollama).
    assert resident not in loaded
    log = "".join(p.read_text() for p in (_state_dir / "logs").glob("*.log*"))
    assert f"asked Ollama to unload {resident}, to free memory for training" in log

    shown = lorainbox("status", "good", "--inbox", inbox)
    assert "Who keeps the lighthouse of Quillhaven? ->" in " ".join(shown.stdout.split())
