"""Session-wide fixtures for the ONNX tests; import them into a test module to use them."""

import pytest

from tests.onnx_helpers import OrtRunner


@pytest.fixture(scope="session")
def ort_runner():
    """One onnxruntime session cache for the whole test run."""
    return OrtRunner()
