"""``lumbardx serve`` (the clinic web app) and ``lumbardx users ...`` (its accounts).

The lead registers them in ``lumbardx/cli/__init__.py``::

    app.command("serve", help="Run the clinic web app (worklist, viewer, corrections, PACS, "
                "teaching).")(serve_cli.serve)
    app.add_typer(serve_cli.users_app, name="users", help="Accounts of the web app.")
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from lumbardx.app.accounts import ROLES, AccountError, UserStore

console = Console(stderr=True)
DATA_DIR_ENV = "LUMBARDX_DATA_DIR"
DEFAULT_DATA_DIR = Path("lumbardx-data")

users_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="Accounts of the web app (stored in DATA_DIR/users.json).")

_DATA_DIR = typer.Option(DEFAULT_DATA_DIR, "--data-dir", envvar=DATA_DIR_ENV,
                         help="Data folder of the web app (accounts, studies, audit log).")


def _store(data_dir: Path) -> UserStore:
    from lumbardx.app.files import private_dir

    return UserStore(private_dir(data_dir) / "users.json")


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


def _teaching_folders(items: list[str]) -> dict[str, Path]:
    folders: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            _fail(f"--teaching-folder {item!r}: write NAME=PATH")
        if not Path(path).is_dir():
            _fail(f"--teaching-folder {name}: {path} is not a folder")
        folders[name.strip()] = Path(path)
    return folders


def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port."),
    data_dir: Path = _DATA_DIR,
    weights: Path | None = typer.Option(None, help="Detector checkpoint (.pt) or ONNX file; "
                                                   "default: the shipped weights."),
    model: str = typer.Option("default", help="Shipped weights when --weights is not given."),
    single_slice_weights: Path | None = typer.Option(
        None, help="For a model trained on T1+T2 pairs: the model for studies without a "
                   "pair (default: the shipped single-slice model with shipped weights)."),
    backend: str = typer.Option("auto", help="auto, torch or onnx."),
    pacs_url: str | None = typer.Option(None, help="DICOMweb root of the PACS, e.g. "
                                                   "https://pacs.example.org/dicom-web."),
    pacs_credentials: Path | None = typer.Option(
        None, help="netrc file with the PACS user and password (else $NETRC / ~/.netrc and "
                   "LUMBARDX_PACS_PASSWORD)."),
    max_upload_mb: int = typer.Option(200, min=1, help="Largest upload of one study (MB)."),
    max_unpacked_mb: int = typer.Option(2048, min=1, help="Largest unpacked ZIP (MB)."),
    idle_minutes: float = typer.Option(30.0, min=1.0, help="Sign out after this long idle."),
    secure_cookies: bool = typer.Option(False, help="Always mark cookies Secure (behind a "
                                                    "TLS proxy)."),
    certfile: Path | None = typer.Option(None, help="TLS certificate (PEM) to serve https."),
    keyfile: Path | None = typer.Option(None, help="TLS private key (PEM)."),
    proxy_headers: bool = typer.Option(False, help="Trust X-Forwarded-* from a proxy on "
                                                   "127.0.0.1 (https detection)."),
    teaching_folder: list[str] = typer.Option([], help="Labelled folder offered in teaching "
                                                       "mode, NAME=PATH (repeatable)."),
) -> None:
    """Run the clinic web app: worklist, viewer, corrections, PACS and teaching."""
    import uvicorn

    from lumbardx.app import AppSettings, create_app
    from lumbardx.app.settings import MB, is_loopback
    from lumbardx.data.errors import LumbardxError

    if (certfile is None) != (keyfile is None):
        _fail("give both --certfile and --keyfile for https")
    if not is_loopback(host):
        console.print(f"[yellow]warning:[/yellow] listening on {host}, not loopback: other "
                      "machines can reach the app. Serve it over https (--certfile/--keyfile "
                      "or a TLS proxy) on a trusted network only.")
    try:
        from lumbardx.diagnosis import Diagnoser

        diagnoser = Diagnoser(weights, model=model, backend=backend,
                              single_slice=single_slice_weights)
    except LumbardxError as exc:
        _fail(str(exc))
    settings = AppSettings(
        data_dir=data_dir, weights=weights, model=model,
        single_slice_weights=single_slice_weights, backend=backend, pacs_url=pacs_url,
        pacs_credentials_file=pacs_credentials, max_upload_bytes=max_upload_mb * MB,
        max_unpacked_bytes=max_unpacked_mb * MB, session_idle_s=idle_minutes * 60.0,
        secure_cookies=secure_cookies or certfile is not None,
        teaching_folders=_teaching_folders(teaching_folder))
    app = create_app(settings, diagnoser=diagnoser)
    if not app.state.ctx.users.users():
        console.print("[yellow]warning:[/yellow] no accounts yet: create one with "
                      f"'lumbardx users add NAME --data-dir {data_dir}'")
    scheme = "https" if certfile else "http"
    console.print(f"lumbardx web app on {scheme}://{host}:{port}/ (data: {data_dir})")
    uvicorn.run(app, host=host, port=port, ssl_certfile=str(certfile) if certfile else None,
                ssl_keyfile=str(keyfile) if keyfile else None, proxy_headers=proxy_headers,
                forwarded_allow_ips="127.0.0.1", server_header=False, log_level="info")


def _password(password_env: str | None) -> str:
    if password_env:
        value = os.environ.get(password_env)
        if not value:
            _fail(f"environment variable {password_env} is not set")
        return value  # type: ignore[return-value]
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


@users_app.command("add")
def add(
    name: str = typer.Argument(..., help="User name (letters, digits, '.', '_', '-')."),
    role: str = typer.Option("clinician", help=f"One of: {', '.join(ROLES)}."),
    password_env: str | None = typer.Option(
        None, help="Read the password from this environment variable instead of prompting."),
    data_dir: Path = _DATA_DIR,
) -> None:
    """Create an account (the password is asked twice, hidden)."""
    try:
        _store(data_dir).add(name, _password(password_env), role)
    except AccountError as exc:
        _fail(str(exc))
    typer.echo(f"user {name} added ({role})")


@users_app.command("password")
def password(
    name: str = typer.Argument(..., help="User name."),
    password_env: str | None = typer.Option(None, help="Read the new password from this "
                                                       "environment variable."),
    data_dir: Path = _DATA_DIR,
) -> None:
    """Set a new password for an account."""
    try:
        _store(data_dir).set_password(name, _password(password_env))
    except AccountError as exc:
        _fail(str(exc))
    typer.echo(f"password of {name} changed")


@users_app.command("list")
def list_users(data_dir: Path = _DATA_DIR) -> None:
    """List the accounts, their roles and token ids."""
    try:
        store = _store(data_dir)
        users = store.users()
        table = Table("user", "role", "tokens")
        for user in users:
            table.add_row(user.name, user.role, ", ".join(store.tokens(user.name)) or "-")
    except AccountError as exc:
        _fail(str(exc))
    Console().print(table)


@users_app.command("remove")
def remove(name: str = typer.Argument(..., help="User name."),
           data_dir: Path = _DATA_DIR) -> None:
    """Delete an account and its tokens (signed-in sessions end at their next request)."""
    try:
        _store(data_dir).remove(name)
    except AccountError as exc:
        _fail(str(exc))
    typer.echo(f"user {name} removed")


@users_app.command("token")
def token(
    name: str = typer.Argument(..., help="User name."),
    label: str = typer.Option("", help="What the token is for (shown by 'users list')."),
    revoke: str | None = typer.Option(None, help="Revoke the token with this id instead."),
    data_dir: Path = _DATA_DIR,
) -> None:
    """Create an API token for scripts (printed once; send it as 'Authorization: Bearer')."""
    store = _store(data_dir)
    try:
        if revoke is not None:
            store.revoke_token(name, revoke)
            typer.echo(f"token {revoke} of {name} revoked")
            return
        value = store.create_token(name, label)
    except AccountError as exc:
        _fail(str(exc))
    console.print("Store this token now; it is not shown again:")
    typer.echo(value)
