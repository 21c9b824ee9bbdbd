"""The page `dvc plots show` fills offline (pipeline.plots_template); tests/test_browser.py draws it in Chromium."""

from __future__ import annotations

import pytest

from features.errors import InputError
from pipeline import plots_template

VERSIONS = {"vega": "6.2.0", "vega_lite": "5.21", "vega_embed": "7.0.2", "vl_convert": "1.9.0.post1"}


def test_newest_vega_lite_of_the_major_version() -> None:
    available = ["5.8", "5.14", "5.21", "6.1", "6.4"]
    assert plots_template.vega_lite_version(5, available) == "5.21"  # by number: 5.8 < 5.14 < 5.21
    assert plots_template.vega_lite_version(6, available) == "6.4"
    with pytest.raises(InputError, match=r"bundles Vega-Lite 5.8, 6.1 but DVC's plot templates are written for"):
        plots_template.vega_lite_version(7, ["5.8", "6.1"])


def test_dvc_templates_are_vega_lite_5() -> None:
    assert plots_template.dvc_vega_lite_major() == 5


def test_page_keeps_dvc_placeholders_and_not_its_cdn_scripts() -> None:
    text = plots_template.page("const spec = 1; window.vegaEmbed = () => '</script><p>';", VERSIONS)
    assert text.count("{plot_divs}") == 1 and text.count("{refresh_tag}") == 1
    assert "{scripts}" not in text and "http" not in text
    # the bundle's names stay in a function, and its "</script" cannot close the tag
    assert "(() => {\nconst spec = 1; window.vegaEmbed = () => '<\\/script><p>';\n})();" in text
    assert text.lower().count("</script") == 1
    assert "Vega 6.2.0, Vega-Lite 5.21 and vega-embed 7.0.2, from vl-convert-python 1.9.0.post1" in text


def test_bundle_with_a_placeholder_is_refused() -> None:
    with pytest.raises(InputError, match=r"contains DVC's placeholder \{plot_divs\}"):
        plots_template.page("var s = '{plot_divs}';", VERSIONS)
