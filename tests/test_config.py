"""rnn_ext.show_config and rnn_ext.__version__."""

import io
import re

import numpy as np
import scipy

import rnn_ext


def test_version_is_single_sourced():
    from rnn_ext._version import __version__

    assert rnn_ext.__version__ == __version__
    assert re.fullmatch(r"\d+\.\d+\.\d+(\S*)", __version__)


def test_show_config_prints_versions_build_and_blas():
    buf = io.StringIO()
    assert rnn_ext.show_config(file=buf) is None
    text = buf.getvalue()
    assert f"rnn_ext {rnn_ext.__version__}" in text
    assert f"numpy {np.__version__}" in text
    assert f"scipy {scipy.__version__}" in text
    assert "compiled core" in text and "build: " in text
    assert "BLAS" in text


def test_show_config_dicts():
    info = rnn_ext.show_config(mode="dicts")
    assert info["rnn_ext"]["version"] == rnn_ext.__version__
    assert info["compiled"]["importable"] is True
    assert info["compiled"]["debug"] is rnn_ext._kernels.DEBUG
    for lib in info["blas"]["libraries"]:
        assert lib["num_threads"] >= 1


def test_show_config_bad_mode():
    import pytest

    with pytest.raises(ValueError, match="mode"):
        rnn_ext.show_config(mode="json")
