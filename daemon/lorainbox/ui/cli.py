"""The ``lorainbox`` command (Typer + rich): the contract in DESIGN.md's command line."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from lorainbox import __version__
from lorainbox.core.config import Settings, load_settings
from lorainbox.core.layout import TRAIN_LOG
from lorainbox.core.logs import setup_logging
from lorainbox.pipeline.jobs import Job, JobStore, refusal
from lorainbox.ui.requests import send_request
from lorainbox.ui.tables import print_job, print_jobs, print_recipes

app = typer.Typer(
    help="LoRA Inbox: drop a folder, get a fine-tuned model in Ollama.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # rich markup would eat `lorainbox[menubar]` in the help
)
agent_app = typer.Typer(
    help="The background agent (launchd on macOS, systemd on Linux).",
    rich_markup_mode="markdown",
)
app.add_typer(agent_app, name="agent")
console = Console()
err = Console(stderr=True)

JobArg = Annotated[
    str, typer.Argument(help="A job: its id, or its name (the folder's, or the model's).")
]
InboxOpt = Annotated[
    Path | None, typer.Option("--inbox", help="The inbox folder (default ~/LoRAInbox).")
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="A TOML file of daemon settings.")]


def _settings(inbox: Path | None = None, config: Path | None = None) -> Settings:
    return load_settings(config, inbox=inbox.expanduser().resolve() if inbox else None)


def _fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error (as plain text: messages quote TOML tables and paths in brackets)."""
    err.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)


def _existing_path(path: Path, expected: str) -> Path:
    """``path`` resolved, or an exit that says it does not exist (not that it is the wrong kind)."""
    path = path.expanduser().resolve()
    if not path.exists():
        raise _fail(f"{path} does not exist; check the path: it should be {expected}")
    return path


def _checked_inbox(settings: Settings) -> Path:
    """The inbox, or an exit when it (or a folder above it) is a file rather than a folder."""
    inbox = settings.inbox.expanduser().resolve()
    blocker = next((p for p in (inbox, *inbox.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        where = "the inbox" if blocker == inbox else f"the inbox {inbox} cannot be made:"
        raise _fail(
            f"{where} {blocker} is a file, not a folder; give --inbox a folder "
            "(or set LORAINBOX_INBOX / `inbox` in the config to one), or move that file away"
        )
    return inbox


@app.command()
def run(
    inbox: InboxOpt = None,
    config: ConfigOpt = None,
    once: Annotated[
        bool, typer.Option("--once", help="Process the drops present, run their jobs, exit.")
    ] = False,
    log_file_only: Annotated[
        bool,
        typer.Option(
            "--log-file-only",
            help="Log to the rotated log file only (the LaunchAgent: its stderr file is not "
            "rotated and would hold every line twice).",
        ),
    ] = False,
) -> None:
    """Run the daemon in the foreground (launchd or systemd runs this)."""
    from lorainbox.pipeline.service import AlreadyRunning, Daemon

    settings = _settings(inbox, config)
    _checked_inbox(settings)
    setup_logging(settings.log_dir, console=not log_file_only)
    daemon = Daemon(settings, once=once)
    try:
        code = daemon.run()
    except AlreadyRunning as e:
        raise _fail(
            f"another lorainbox daemon (pid {e}) is already watching {settings.inbox}; "
            "stop it first (`lorainbox agent uninstall`, or kill that pid)",
            3,
        ) from None
    if once:
        print_jobs(console, daemon.store.list(str(settings.inbox)))
    raise typer.Exit(code)


@app.command()
def status(
    job: Annotated[
        str | None, typer.Argument(help="One job to show whole (id, or job or model name).")
    ] = None,
    inbox: InboxOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    all_inboxes: Annotated[bool, typer.Option("--all", help="Jobs of every inbox.")] = False,
    web: Annotated[
        bool, typer.Option("--web", help="Open the status page (print its URL with the token).")
    ] = False,
) -> None:
    """Jobs and their progress."""
    settings = _settings(inbox, config)
    if web:
        _open_status_page(settings)
        return
    if not all_inboxes and not _checked_inbox(settings).exists():
        raise _fail(
            f"the inbox {settings.inbox} does not exist yet; `lorainbox run` (or "
            "`lorainbox agent install`, or `lorainbox submit FOLDER`) makes it"
        )
    store = JobStore(settings.db_path)
    if job is not None:
        one = _job_or_exit(store, job, settings)
        if as_json:
            print(json.dumps(one.as_dict(), indent=2, default=str))
        else:
            print_job(console, one)
        return
    jobs = store.list(None if all_inboxes else str(settings.inbox))
    if as_json:
        print(json.dumps([j.as_dict() for j in jobs], indent=2, default=str))
        return
    from lorainbox.pipeline.service import DaemonLock

    pid = DaemonLock(settings.lock_path).holder()
    console.print(
        f"[bold]LoRA Inbox[/bold] {_version()} — inbox {escape(str(settings.inbox))} — daemon "
        + (f"[green]running[/green] (pid {pid})" if pid else "[yellow]not running[/yellow]")
    )
    print_jobs(console, jobs)


def _open_status_page(settings: Settings) -> None:
    from lorainbox.ui.status_server import page_url, read_token

    if settings.status_port == 0:
        raise _fail("the status page is off (status_port = 0 in the config)")
    token = read_token(settings.state_dir)
    if token is None:
        raise _fail("no status page yet: start the daemon (`lorainbox run`), then try again")
    url = page_url(settings.status_port, token)
    print(url)
    if sys.platform == "darwin" or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        import webbrowser

        webbrowser.open(url)


@app.command()
def submit(
    path: Annotated[Path, typer.Argument(help="A folder holding recipe.toml and data.")],
    inbox: InboxOpt = None,
    config: ConfigOpt = None,
    move: Annotated[bool, typer.Option("--move", help="Move instead of copying.")] = False,
) -> None:
    """Put a folder into the inbox (copied, so the original stays where it is)."""
    settings = _settings(inbox, config)
    src = _existing_path(path, "a drop folder (recipe.toml and data)")
    if not src.is_dir():
        raise _fail(f"{src} is not a folder; a drop is a folder with recipe.toml and data")
    if not any(p.is_file() for p in src.rglob("*")):
        raise _fail(f"{src} is empty; a drop holds recipe.toml and its data (train.jsonl)")
    from lorainbox.pipeline.watcher import InboxLayout

    layout = InboxLayout(_checked_inbox(settings))
    try:
        layout.create()
    except OSError as e:
        raise _fail(f"could not make the inbox {settings.inbox}: {e.strerror}") from None
    # Copy under a hidden name first, so the watcher never sees half a drop.
    staging = Path(
        tempfile.mkdtemp(prefix=f".{src.name}.", suffix=".submitting", dir=settings.inbox)
    )
    try:
        if move:
            staging.rmdir()
            shutil.move(src, staging)  # a rename, or a copy and delete across disks
        else:
            shutil.copytree(src, staging, symlinks=True, dirs_exist_ok=True)
    except OSError as e:
        if not move:
            shutil.rmtree(staging, ignore_errors=True)
            raise _fail(f"could not copy {src} into the inbox: {e}") from None
        # Never delete during a failed move: part of the drop may be on either side.
        kept = f"; what was moved so far is in {staging}" if staging.exists() else ""
        raise _fail(f"could not move {src} into the inbox: {e}{kept}") from None
    dest = layout.move(staging, settings.inbox, src.name)
    console.print(f"Submitted [bold]{escape(src.name)}[/bold] as {escape(str(dest))}")
    from lorainbox.pipeline.service import DaemonLock

    if DaemonLock(settings.lock_path).holder() is None:
        console.print(
            "The daemon is not running, so nothing takes it in yet: `lorainbox run` (in a "
            "terminal) or `lorainbox agent install` (at every login) starts it.",
            markup=False,
        )


@app.command()
def train(
    path: Annotated[Path, typer.Argument(help="A drop folder; results are written into it.")],
    config: ConfigOpt = None,
) -> None:
    """Train one drop in the foreground: no daemon, no gates, a progress bar."""
    from lorainbox.ui.train_command import train_foreground

    settings = _settings(None, config)
    setup_logging(settings.log_dir, console=False)
    drop = _existing_path(path, "a drop folder (recipe.toml and data)")
    raise typer.Exit(train_foreground(drop, settings, console))


def _job_or_exit(store: JobStore, ref: str, settings: Settings) -> Job:
    job = store.find(ref, settings.inbox) or store.find(ref)
    if job is None:
        raise _fail(f"no job {ref!r}; `lorainbox status` lists them")
    return job


def _request(action: str, ref: str, inbox: Path | None, config: Path | None) -> None:
    settings = _settings(inbox, config)
    store = JobStore(settings.db_path)
    job = _job_or_exit(store, ref, settings)
    if why := refusal(job, action):
        raise _fail(why)
    console.print(send_request(settings, store, job, action), markup=False)


@app.command()
def cancel(job: JobArg, inbox: InboxOpt = None, config: ConfigOpt = None) -> None:
    """Cancel a job (its folder moves to Failed/, nothing is deleted)."""
    _request("cancel", job, inbox, config)


@app.command()
def retry(job: JobArg, inbox: InboxOpt = None, config: ConfigOpt = None) -> None:
    """Put a failed or cancelled job back in the queue (it resumes from its checkpoint)."""
    _request("retry", job, inbox, config)


@app.command()
def pause(job: JobArg, inbox: InboxOpt = None, config: ConfigOpt = None) -> None:
    """Pause a job at its next checkpoint until you resume it."""
    _request("pause", job, inbox, config)


@app.command()
def resume(job: JobArg, inbox: InboxOpt = None, config: ConfigOpt = None) -> None:
    """Resume a job you paused."""
    _request("resume", job, inbox, config)


@app.command()
def logs(
    job: JobArg,
    inbox: InboxOpt = None,
    config: ConfigOpt = None,
    lines: Annotated[int, typer.Option("-n", help="How many lines from the end.")] = 50,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing.")] = False,
) -> None:
    """Print the end of a job's train.log."""
    settings = _settings(inbox, config)
    j = _job_or_exit(JobStore(settings.db_path), job, settings)
    path = j.folder / TRAIN_LOG
    if not path.exists():
        raise _fail(f"job {j.id} {j.name} has no train.log yet ({path})")
    with open(path, errors="replace") as f:
        for line in f.readlines()[-lines:]:
            sys.stdout.write(line)
        while follow:
            line = f.readline()
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                time.sleep(0.5)


@app.command()
def recipes(config: ConfigOpt = None, inbox: InboxOpt = None) -> None:
    """List the recipes a drop can extend: yours (in the inbox's recipes/) and the built-in ones."""
    print_recipes(console, _settings(inbox, config).inbox)


@app.command()
def doctor(config: ConfigOpt = None) -> None:
    """What works on this machine: MLX, torch, llama.cpp, Ollama, sensors, notifications."""
    from lorainbox.ui.doctor import run_checks

    settings = _settings(None, config)
    ok = run_checks(settings, console)
    raise typer.Exit(0 if ok else 1)


@app.command()
def demo(
    directory: Annotated[
        Path, typer.Option("--dir", help="Where the demo inbox and state go.")
    ] = Path(".demo"),
    example: Annotated[
        str,
        typer.Option(
            "--example",
            help="The example drop: lighthouse (SmolLM2-135M, ~3 min) or tiny-fact (a tiny "
            "random model, ~1 min).",
        ),
    ] = "lighthouse",
) -> None:
    """Offline end to end: a real small model learns a fact; daemon, GGUF, Ollama (if running)."""
    from lorainbox.ui.demo import EXAMPLES, run_demo

    if example not in EXAMPLES:
        Console(stderr=True).print(
            f"[red]error:[/red] no example drop {example!r}; choose one of {', '.join(EXAMPLES)}"
        )
        raise typer.Exit(2)
    raise typer.Exit(run_demo(directory.expanduser().resolve(), console, EXAMPLES[example]))


@app.command()
def register(
    gguf: Annotated[Path, typer.Argument(help="A .gguf file.")],
    name: Annotated[str, typer.Option("--name", help="The Ollama model name.")],
    system: Annotated[str | None, typer.Option("--system", help="A system prompt.")] = None,
    quantize: Annotated[
        str | None,
        typer.Option("--quantize", help='e.g. q4_K_M (the default); "none" keeps the file as is.'),
    ] = None,
) -> None:
    """Upload a GGUF to the local Ollama and create a model from it.

    A GGUF in a results folder is registered with its recipe's [ollama] settings (system,
    parameters, template) and [export] quantize; --system and --quantize override them."""
    from datetime import datetime

    from lorainbox.core.errors import DropError
    from lorainbox.export.ollama import (
        InvalidOllamaSetting,
        OllamaClient,
        OllamaError,
        OllamaUnavailable,
        quantize_type,
        register_model,
        validate_model_name,
    )

    path = _existing_path(gguf, "the model.gguf in a results folder")
    if not path.is_file():
        raise _fail(f"{path} is not a file; register takes the model.gguf from a results folder")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise _fail(
                f"{path} is not a GGUF file (it does not start with the GGUF magic); "
                "register takes the model.gguf from a results folder"
            )
    try:
        validate_model_name(name, where="--name")
    except (ValueError, DropError) as e:
        raise _fail(str(e)) from None
    from lorainbox.pipeline.supervisor import recipe_in

    recipe = recipe_in(path.parent)
    if recipe is not None:
        from lorainbox.core.layout import RESOLVED_RECIPE, WORK_DIR
        from lorainbox.export.ollama_rules import parameter_problems, template_problems

        where = f"{path.parent / WORK_DIR / RESOLVED_RECIPE} (the job's recipe), [ollama]"
        problems = parameter_problems(recipe.ollama.parameters, f"{where} parameters")
        if recipe.ollama.template is not None:
            problems += template_problems(recipe.ollama.template, f"{where} template")
        if problems:
            raise _fail(str(DropError(problems)))
    if quantize is None:
        quantize = recipe.export.quantize if recipe else "q4_K_M"
    q = None if quantize in (None, "", "none") else quantize
    try:
        quantize_type(q)
    except InvalidOllamaSetting as e:
        p = e.problems[0]
        raise _fail(f"--quantize: {p.what}; {p.fix}") from None
    settings = _settings()
    client = OllamaClient(settings.ollama_host)
    try:
        with console.status("registering with Ollama…") as st:
            result = register_model(
                client,
                path,
                name,
                system=system if system is not None or recipe is None else recipe.ollama.system,
                parameters=recipe.ollama.parameters if recipe else None,
                template=recipe.ollama.template if recipe else None,
                quantize=q,
                stamp=datetime.now(),
                on_status=lambda s: st.update(f"Ollama: {s.get('status', s)}"),
            )
    except OllamaUnavailable as e:
        raise _fail(f"{e}; start it (`ollama serve`) and register again") from None
    except OllamaError as e:
        raise _fail(f"Ollama refused: {e}") from None
    except DropError as e:
        raise _fail(str(e)) from None
    console.print(
        f"Registered [bold]{escape(result.latest)}[/bold] — try `ollama run {escape(name)}`"
    )


@app.command()
def chat(
    name: Annotated[
        str, typer.Argument(help="An Ollama model name, a .gguf, or a results folder.")
    ],
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="Ask one question and exit.")
    ] = None,
    inbox: InboxOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Talk to a trained model (through Ollama; through llama.cpp on the GGUF when Ollama is away)."""
    from lorainbox.ui.chat_command import chat_command

    settings = _settings(inbox, config)
    raise typer.Exit(chat_command(name, prompt, settings, console))


@agent_app.command("install")
def agent_install(
    inbox: InboxOpt = None,
    config: ConfigOpt = None,
    menubar: Annotated[
        bool, typer.Option("--menubar", help="Start the menu-bar app at login too (macOS).")
    ] = False,
) -> None:
    """Start the daemon at login (LaunchAgent on macOS, systemd user unit on Linux)."""
    from lorainbox.platform import agent as launchd
    from lorainbox.platform.notifier import post_test

    settings = _settings(inbox, config)
    try:
        report = launchd.install(settings=settings, menubar=menubar)
    except launchd.AgentError as e:
        raise _fail(str(e)) from None
    console.print(report.message, markup=False)
    for warning in report.warnings:
        console.print(f"Warning: {warning}", markup=False)
    if report.ok:
        _, help_text = post_test()
        console.print(f"Posted a test notification; {help_text}.", markup=False)
    raise typer.Exit(0 if report.ok else 1)


@agent_app.command("uninstall")
def agent_uninstall() -> None:
    """Stop the daemon and remove it from login."""
    from lorainbox.platform import agent as launchd

    console.print(launchd.uninstall().message, markup=False)


@agent_app.command("status")
def agent_status() -> None:
    """Whether the agent is installed and running."""
    from lorainbox.platform import agent as launchd

    console.print(launchd.status().message, markup=False)


@agent_app.command("plist")
def agent_plist(inbox: InboxOpt = None, config: ConfigOpt = None) -> None:
    """Print the LaunchAgent plist (or the systemd unit on Linux) that install would write."""
    from lorainbox.platform import agent as launchd

    settings = _settings(inbox, config)
    try:
        print(launchd.render(settings=settings))
    except launchd.AgentError as e:
        raise _fail(str(e)) from None


@app.command()
def menubar() -> None:
    """A menu-bar app showing the queue and progress (macOS, `pip install lorainbox[menubar]`)."""
    from lorainbox.ui.menubar import main as menubar_main

    raise typer.Exit(menubar_main())


def _version() -> str:
    """The installed package's version; the source's when run from a checkout not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lorainbox")
    except PackageNotFoundError:
        return __version__


def _print_version(value: bool) -> None:
    if value:
        print(f"lorainbox {_version()}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            callback=_print_version,
            is_eager=True,  # before Typer asks for a command
        ),
    ] = False,
) -> None:
    pass


if __name__ == "__main__":  # pragma: no cover
    app()
