"""The sample personalization data: deterministic, valid, and shaped as documented."""

from __future__ import annotations

from agent.training import sample_data as S
from agent.training.data import DataStats, read_interactions


def test_deterministic_and_parseable(tmp_path):
    a = S.generate_interactions(120, seed=3)
    assert a == S.generate_interactions(120, seed=3)
    assert a != S.generate_interactions(120, seed=4)
    path = S.write_jsonl(tmp_path / "d.jsonl", a)
    stats = DataStats()
    items = read_interactions(path.read_text().splitlines(), stats)
    assert stats.malformed == 0 and len(items) == 120
    persona = S.make_persona(3)
    assert all(it.target.startswith(persona.opener) for it in items)
    assert any(r.get("feedback") == "down" and "correction" in r for r in a)
    assert S.main(["--out", str(tmp_path / "c.jsonl"), "--kind", "constant", "--n", "5"]) == 0
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 5
