"""The `llmos models` commands: list the CPUs, and make a better one in one command.

    llmos models [--json]                       the CPUs programs can run on, the default marked,
                                                and the embedded model's weight format and why
    llmos models add NAME SOURCE [--default] [--sha256 HEX] [--revision R] [--force]
                                                SOURCE: a local .gguf, or hf:OWNER/REPO/FILE.gguf
    llmos models default NAME                   make NAME the default CPU
    llmos models rm NAME                        unregister NAME (its file stays)

A registered model is a name in `config.json` for a GGUF file (`llmos.kernel.models`): use it
with `llmos run --model NAME`, a program's `model: NAME`, or as the default. Errors are one
line: a bad name or source exits 4, a file that is not a GGUF, a checksum that does not match
or a download that cannot be made (offline) exits 5, an unknown name exits 21.

What this module does not do: download, check or register anything itself (`llmos.kernel.models`
does), or load a model (the first process that uses it does).
"""

from __future__ import annotations

import json

import click

from llmos import config
from llmos.front.clikit import handle_errors


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handle_errors
def models(ctx: click.Context, as_json: bool) -> None:
    """List the CPUs llmos can run programs on (the default is marked); add one."""
    if ctx.invoked_subcommand is not None:
        return
    from llmos.kernel import boot  # the kernel only when the command runs

    system = boot.boot(open_log=False)
    rows = system.list_models()
    default = system.config.default_model
    if as_json:
        click.echo(json.dumps(rows))
        return
    for row in rows:
        mark = "  (default)" if row["name"] == default else ""
        click.echo(f"{row['name']:<28} {row['kind']:<10} {row['detail']}{mark}")
        if row.get("weights_reason"):
            click.echo(
                f"{'':<28} {'':<10} weights {row['weights_reason']} ({row['weights_source']})"
            )


@models.command("add")
@click.argument("name")
@click.argument("source")
@click.option("--default", "make_default", is_flag=True, help="Make it the default CPU.")
@click.option("--sha256", "expected", metavar="HEX", help="The file's SHA-256, checked.")
@click.option("--revision", help="With hf:..., a branch, tag or commit of the repository.")
@click.option("--force", is_flag=True, help="Replace a model already registered as NAME.")
@handle_errors
def models_add(
    name: str,
    source: str,
    make_default: bool,
    expected: str | None,
    revision: str | None,
    force: bool,
) -> None:
    """Register SOURCE (a local .gguf file, or hf:OWNER/REPO/FILE.gguf to download it from
    Hugging Face) as the CPU NAME; use it with `llmos run --model NAME`."""
    from llmos.kernel import models as registry  # the registry only for this command

    added = registry.add(
        config.home(),
        name,
        source,
        default=make_default,
        replace=force,
        expected_sha256=expected,
        revision=revision,
    )
    click.echo(added["path"])
    role = "the default CPU" if make_default else f"a CPU: llmos run --model {name} ..."
    click.echo(
        f"llmos: model {name} ({added['bytes'] / 1e6:.1f} MB) registered as {role}", err=True
    )


@models.command("default")
@click.argument("name")
@handle_errors
def models_default(name: str) -> None:
    """Make NAME (a registered model, embedded or openai/<model>) the default CPU."""
    from llmos.kernel import models as registry

    registry.set_default(config.home(), name)


@models.command("rm")
@click.argument("name")
@handle_errors
def models_rm(name: str) -> None:
    """Unregister the model NAME (its file is left where it is)."""
    from llmos.kernel import models as registry

    removed = registry.remove(config.home(), name)
    note = "; the default is embedded again" if removed["was_default"] else ""
    click.echo(f"llmos: model {name} unregistered ({removed['path']} kept){note}", err=True)
