"""What report.md says of how a job was trained, from the worker's result."""

from daemon.results import trained_text


def test_trained_line_names_steps_trainer_device_and_compiling() -> None:
    result = {"steps": 2000, "trainer": "torch", "device": "cuda", "compiled": True}
    assert trained_text(result) == "2000 steps with torch on cuda, layers compiled"
    assert trained_text({**result, "compiled": False}) == "2000 steps with torch on cuda"
    assert trained_text({"steps": 12, "trainer": "mlx"}) == "12 steps with mlx on ?"


def test_no_trained_line_before_training_has_a_result() -> None:
    assert trained_text({}) == ""
    assert trained_text({"registered": False}) == ""
