"""Write docs/cli.md from the CLI's own help texts (tests/test_docs.py checks it is current).

    .venv/bin/python scripts/gen_cli_docs.py > docs/cli.md
"""

from __future__ import annotations

import click

from snapdiff.cli import cli


def render() -> str:
    out = ["# snapdiff command line", "",
           "Generated from `snapdiff COMMAND --help` by `scripts/gen_cli_docs.py`.", ""]
    ctx = click.Context(cli, info_name="snapdiff")
    out += ["```", cli.get_help(ctx), "```", ""]
    for name in sorted(cli.commands):
        cmd = cli.commands[name]
        sub = click.Context(cmd, info_name=name, parent=ctx)
        out += [f"## {name}", "", "```", cmd.get_help(sub), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
