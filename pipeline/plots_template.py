"""Write the page `dvc plots show` fills, with Vega, Vega-Lite and vega-embed inlined, so the plots render offline.

DVC's own page loads those three scripts from a CDN: without a network, ``dvc_plots/index.html`` shows titles and
images but every Vega plot stays blank. ``.dvc/config`` points ``plots.html_template`` (a path relative to .dvc/)
at the page this module writes; ``make install`` writes it (``python -m pipeline.plots_template --out
.dvc/offline_plots.html``) from the vl-convert-python package, so no third-party minified JavaScript is committed
and the scripts follow the locked version of that package.

DVC fills two placeholders of the page: ``{plot_divs}`` (one ``<div>`` per plot, each with an inline script that
calls ``vegaEmbed``) and ``{refresh_tag}``. The page leaves out ``{scripts}``, where DVC would put its CDN tags.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import vl_convert
from dvc_render.vega_templates import TEMPLATES

from features.errors import InputError
from pipeline import cli
from pipeline.io import atomic_path

log = logging.getLogger("plots_template")

# What the bundle leaves in the global scope: DVC's inline scripts call vegaEmbed.
SNIPPET = "window.vegaEmbed = vegaEmbed; window.vega = vega; window.vegaLite = vegaLite;"

# DVC's HTML renderer substitutes these anywhere in the page text, scripts included.
PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}", "{scripts}")

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- Vega {vega}, Vega-Lite {vega_lite} and vega-embed {vega_embed}, from vl-convert-python {vl_convert} -->
    <script type="text/javascript">
{bundle}
    </script>
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def dvc_vega_lite_major() -> int:
    """The Vega-Lite major version that every one of DVC's built-in plot templates declares in its ``$schema``."""
    majors = set()
    for template in TEMPLATES:
        found = re.search(r"/vega-lite/v(\d+)\.json$", str(template.DEFAULT_CONTENT.get("$schema", "")))
        if found is None:
            raise InputError(f"DVC's plot template {template.DEFAULT_NAME!r} declares no Vega-Lite schema version")
        majors.add(int(found.group(1)))
    if len(majors) != 1:
        raise InputError(f"DVC's plot templates declare several Vega-Lite major versions: {sorted(majors)}")
    return majors.pop()


def vega_lite_version(major: int, available: Sequence[str]) -> str:
    """The newest of the ``available`` Vega-Lite versions ("5.21", "6.4", ...) with this ``major`` version.

    A spec written for Vega-Lite 5 is compiled by a Vega-Lite 5: vega-embed warns in the console, and may draw
    differently, when the library's major version is not the one the spec's ``$schema`` names.
    """
    same = [v for v in available if v.split(".")[0] == str(major)]
    if not same:
        installed = importlib.metadata.version("vl-convert-python")
        raise InputError(
            f"vl-convert-python {installed} bundles Vega-Lite {', '.join(available)} but DVC's plot templates are "
            f"written for Vega-Lite {major}: install a vl-convert-python that bundles it (pyproject.toml)"
        )
    return max(same, key=lambda v: tuple(int(part) for part in v.split(".")))


def page(bundle: str, versions: dict[str, str]) -> str:
    """The HTML template with ``bundle`` (a classic script that sets ``window.vegaEmbed``) inlined.

    The bundle runs inside a function so that its top-level names stay out of the global scope, where DVC's inline
    ``var spec = ...`` scripts live; ``</script`` is escaped so that the HTML parser does not end the script early
    (``<\\/`` means ``</`` in JavaScript strings, regular expressions and comments alike).
    """
    for placeholder in PLACEHOLDERS:
        if placeholder in bundle:
            raise InputError(f"the JavaScript bundle contains DVC's placeholder {placeholder}: DVC would replace it")
    safe = re.sub(r"</(script)", r"<\\/\1", bundle, flags=re.IGNORECASE)
    text = PAGE
    for key, value in {**versions, "bundle": f"(() => {{\n{safe}\n}})();"}.items():
        text = text.replace("{" + key + "}", value)
    return text


def build() -> str:
    """The page for this environment: vl-convert-python's bundle, with the Vega-Lite that DVC's templates use."""
    lite = vega_lite_version(dvc_vega_lite_major(), vl_convert.get_vegalite_versions())
    versions = {
        "vega": vl_convert.get_vega_version(),
        "vega_lite": lite,
        "vega_embed": vl_convert.get_vega_embed_version(),
        "vl_convert": importlib.metadata.version("vl-convert-python"),
    }
    return page(vl_convert.javascript_bundle(SNIPPET, vl_version=lite), versions)


def main(argv: Sequence[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="the HTML file to write (.dvc/config: plots.html_template)")
    args = p.parse_args(argv)
    text = build()
    with atomic_path(args.out) as tmp:
        tmp.write_text(text, encoding="utf-8")
    log.info("written to %s (%d kB)", args.out, len(text.encode("utf-8")) // 1000)


if __name__ == "__main__":
    cli.run(main)
