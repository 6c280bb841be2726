"""What a serving process builds at start, not on its first run's completion."""

import subprocess
import sys

PROBE = """
from pydantic._internal._mock_val_ser import MockValSer
from pydantic_ai.messages import ModelMessagesTypeAdapter
from threadlog.infra.runs.history import warm_model_messages
before = isinstance(ModelMessagesTypeAdapter.serializer, MockValSer)
warm_model_messages()
after = isinstance(ModelMessagesTypeAdapter.serializer, MockValSer)
print(before, after)
"""


def test_the_model_messages_serializer_is_built_by_the_warm_up_not_left_to_the_first_run() -> None:
    # A process of its own: in this one another test may have built it already.
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["True", "False"]
