"""``lumbardx pacs pull`` / ``lumbardx pacs push``: sagittal MR from a PACS, results back to it.

Both talk DICOMweb (:mod:`lumbardx.pacs.client`). The password never comes from a command-line
argument (it would sit in the shell history and the process list): it is read from the
environment variable named by ``--password-env`` (default ``LUMBARDX_PACS_PASSWORD``), from a
netrc file (``--netrc``, ``$NETRC`` or ``~/.netrc``), or asked for with hidden input. Output
names no patient: tables show series numbers, descriptions, planes and UIDs only.

Exit status: 0 all done; 1 some series or files failed, or nothing matched; 2 the PACS could not
be used (bad URL, connection refused, authentication failed) or bad options.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from lumbardx.data.errors import InputError
from lumbardx.pacs.client import PacsClient, PacsError
from lumbardx.pacs.config import DEFAULT_PASSWORD_ENV, DEFAULT_TIMEOUT_S, resolve_settings

app = typer.Typer(help="Pull sagittal MR series from a PACS and push results back (DICOMweb).",
                  no_args_is_help=True, add_completion=False,
                  pretty_exceptions_show_locals=False)

_DICM_OFFSET = 128

URL_OPT = typer.Option(..., "--url", envvar="LUMBARDX_PACS_URL",
                       help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web (Orthanc).")
USER_OPT = typer.Option(None, "--user", envvar="LUMBARDX_PACS_USER",
                        help="User name (else from the netrc file; none: no authentication).")
PASSWORD_ENV_OPT = typer.Option(DEFAULT_PASSWORD_ENV, "--password-env", metavar="VAR",
                                help="Environment variable holding the password; asked for "
                                     "(hidden) when neither it nor the netrc file has one.")
NETRC_OPT = typer.Option(None, "--netrc", dir_okay=False,
                         help="netrc-format credentials file (default $NETRC or ~/.netrc).")
CA_OPT = typer.Option(None, "--ca-bundle", dir_okay=False,
                      help="CA certificates (PEM) to verify the PACS's TLS certificate.")
INSECURE_OPT = typer.Option(False, "--insecure", help="Do not verify the TLS certificate.")
TIMEOUT_OPT = typer.Option(DEFAULT_TIMEOUT_S, "--timeout", min=1.0,
                           help="Seconds to wait for each PACS answer.")


def _connect(console: Console, url: str, user: str | None, password_env: str,
             netrc_file: Path | None, ca_bundle: Path | None, insecure: bool,
             timeout: float) -> PacsClient:
    """A client with credentials resolved (prompting for a missing password); exit 2 on bad
    settings."""
    if insecure and ca_bundle is not None:
        console.print("[red]error:[/red] --insecure and --ca-bundle contradict each other")
        raise typer.Exit(2)
    verify: bool | str = False if insecure else (str(ca_bundle) if ca_bundle else True)
    try:
        settings = resolve_settings(url, user=user, password_env=password_env or None,
                                    credentials_file=netrc_file, verify=verify,
                                    timeout_s=timeout)
    except InputError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    for warning in settings.transport_warnings():
        console.print(f"[yellow]warning:[/yellow] {warning}")
    password = settings.password
    if settings.user is not None and password is None:
        password = typer.prompt(f"Password for {settings.user} at {settings.url}",
                                hide_input=True, err=True)
    return PacsClient(settings.url, settings.user, password, settings.verify,
                      settings.timeout_s)


@app.command("pull")
def pull(
    out: Path = typer.Option(..., "--out", file_okay=False,
                             help="Folder to write into: OUT/<study UID>/<series UID>/*.dcm."),
    url: str = URL_OPT,
    patient_id: str | None = typer.Option(None, "--patient-id",
                                          help="Pull the sagittal MR series of this patient."),
    study: str | None = typer.Option(None, "--study", help="Pull the sagittal MR series of "
                                                           "this Study Instance UID."),
    user: str | None = USER_OPT,
    password_env: str = PASSWORD_ENV_OPT,
    netrc_file: Path | None = NETRC_OPT,
    ca_bundle: Path | None = CA_OPT,
    insecure: bool = INSECURE_OPT,
    timeout: float = TIMEOUT_OPT,
) -> None:
    """Find the sagittal MR series of a patient or study on the PACS and download them."""
    console = Console()
    if not patient_id and not study:
        console.print("[red]error:[/red] give --patient-id or --study (pulling a whole PACS "
                      "is not supported)")
        raise typer.Exit(2)
    client = _connect(console, url, user, password_env, netrc_file, ca_bundle, insecure,
                      timeout)
    with client:
        try:
            series = client.find_series(patient_id=patient_id, study_uid=study)
        except PacsError as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2) from None
        if not series:
            console.print("no sagittal MR series matched on the PACS")
            raise typer.Exit(1)
        table = Table(title=f"Sagittal MR series pulled into {out}")
        for name in ("Study date", "Series #", "Description", "Instances", "Folder", "Status"):
            table.add_column(name)
        failures = 0
        for info in series:
            folder = out / info.study_uid / info.series_uid
            try:
                files = client.pull_series(info.study_uid, info.series_uid, folder)
                status = "[green]pulled[/green]"
            except (PacsError, OSError, ValueError) as exc:  # ValueError: unsavable data set
                if isinstance(exc, PacsError) and exc.status in (None, 401, 403):
                    # the PACS went away or refuses: stop
                    console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
                    raise typer.Exit(2) from None
                failures += 1
                files = []
                status = f"[red]failed: {escape(str(exc))}[/red]"
            table.add_row(info.study_date or "-", str(info.series_number or "-"),
                          escape(info.description) or "-", str(len(files)),
                          str(folder.relative_to(out)), status)
    console.print(table)
    console.print(f"{len(series) - failures} of {len(series)} series pulled")
    if failures:
        raise typer.Exit(1)


def _is_part10(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            fh.seek(_DICM_OFFSET)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def collect_files(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]], int]:
    """Files to store: given files as they are; in folders (recursively, hidden entries
    skipped) the DICOM Part 10 files.

    Returns:
        ``(files, problems, skipped)``: files to send, ``(path, problem)`` for arguments that
        do not exist, and the number of non-DICOM files passed over in folders.
    """
    files: list[Path] = []
    problems: list[tuple[Path, str]] = []
    skipped = 0
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                rel = child.relative_to(path)
                if not child.is_file() or any(p.startswith(".") for p in rel.parts):
                    continue
                if _is_part10(child):
                    files.append(child)
                else:
                    skipped += 1
        elif path.is_file():
            files.append(path)
        else:
            problems.append((path, "does not exist"))
    return files, problems, skipped


@app.command("push")
def push(
    paths: list[Path] = typer.Argument(..., help="DICOM files or folders (e.g. the sr.dcm and "
                                                 "overlay_sc.dcm of a diagnose output folder)."),
    url: str = URL_OPT,
    user: str | None = USER_OPT,
    password_env: str = PASSWORD_ENV_OPT,
    netrc_file: Path | None = NETRC_OPT,
    ca_bundle: Path | None = CA_OPT,
    insecure: bool = INSECURE_OPT,
    timeout: float = TIMEOUT_OPT,
) -> None:
    """Store DICOM files on the PACS (STOW-RS); failing files are reported, the rest stored."""
    console = Console()
    files, problems, skipped = collect_files(paths)
    if skipped:
        console.print(f"skipped {skipped} non-DICOM file(s) in the given folders")
    if not files:
        for path, problem in problems:
            console.print(f"[red]{escape(str(path))}: {escape(problem)}[/red]")
        console.print("[red]error:[/red] no DICOM files to store")
        raise typer.Exit(1)
    client = _connect(console, url, user, password_env, netrc_file, ca_bundle, insecure,
                      timeout)

    def failed(path: Path, exc: Exception) -> None:
        problems.append((path, str(getattr(exc, "problem", exc))))

    with client:
        try:
            stored = client.push(files, on_error=failed)
        except PacsError as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2) from None
    table = Table(title=f"Stored on {client.url}")
    table.add_column("File")
    table.add_column("Status")
    for path in stored:
        table.add_row(escape(str(path)), "[green]stored[/green]")
    for path, problem in problems:
        table.add_row(escape(str(path)), f"[red]{escape(problem)}[/red]")
    console.print(table)
    console.print(f"{len(stored)} of {len(stored) + len(problems)} file(s) stored")
    if problems:
        raise typer.Exit(1)
