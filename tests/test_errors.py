"""One line per problem, for notifications and the log."""

from daemon.errors import DropError, Problem


def test_a_problem_reads_as_one_sentence_without_doubled_stops() -> None:
    asked = Problem("unknown key `iter`; did you mean `iters`?", "recipe.toml, line 3", "rename it")
    assert (
        asked.line()
        == "recipe.toml, line 3: unknown key `iter`; did you mean `iters`? Fix: rename it"
    )
    plain = Problem("the file is empty", "train.jsonl", "add examples")
    assert plain.line() == "train.jsonl: the file is empty. Fix: add examples"
    assert str(DropError([asked, plain])) == f"{asked.line()}; {plain.line()}"
