"""Fixtures every test gets."""
import pytest
from mmengine.visualization import Visualizer


def _visualizer_classes(cls=Visualizer):
    yield cls
    for subclass in cls.__subclasses__():
        yield from _visualizer_classes(subclass)


@pytest.fixture(autouse=True)
def forget_visualizers():
    """MMEngine keeps visualizers by name for the whole process, and a runner reuses the
    one of its name: without this, a test's runner would write into an earlier test's
    (deleted) temporary directory."""
    yield
    for cls in _visualizer_classes():
        cls._instance_dict.clear()
