"""Two real processes under torchrun (gloo): uneven shards, no hang, disjoint samples, with
batches as planned and regrouped by length buckets."""

import json
import textwrap
from pathlib import Path

import pytest
from testdata import numbered_pngs, torchrun

CHILD = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    from polymodal.adapters import get
    from polymodal.pipelines.stream.stream import Stream

    dist.init_process_group("gloo")
    fields = {"image": get("image")(size=None, extensions=["png"]), "label": get("label")()}
    options = json.loads(sys.argv[3])
    loader = Stream(sys.argv[1], fields, batch_size=4, buffer_size=16, **options).loader(1)
    seen, batches = [], 0
    for epoch in range(2):
        for batch in loader:
            batches += 1
            seen += [(epoch, k, bool(r)) for k, r in zip(batch.keys, batch.repeated.tolist())]
            dist.barrier()  # a rank with fewer batches would hang here
    everything = [None] * dist.get_world_size()
    dist.all_gather_object(everything, {"rank": dist.get_rank(), "batches": batches,
                                        "seen": seen, "len": len(loader)})
    if dist.get_rank() == 0:
        open(sys.argv[2], "w").write(json.dumps(everything))
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("options", [{}, {"buckets": "auto", "lookahead": 3}])
def test_torchrun_two_ranks_over_uneven_shards(tmp_path: Path, options: dict):
    data = tmp_path / "data"
    total = numbered_pngs(data, sizes=[9, 1, 14, 0, 3])  # 27 samples: ranks get 14 each, one repeat
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    out = tmp_path / "out.json"
    torchrun([str(child), str(data), str(out), json.dumps(options)], timeout=240)
    ranks = json.loads(out.read_text())
    assert [r["batches"] for r in ranks] == [8, 8] and ranks[0]["len"] == 4
    for epoch in (0, 1):
        real = [[k for e, k, rep in r["seen"] if e == epoch and not rep] for r in ranks]
        assert not set(real[0]) & set(real[1])
        assert sorted(real[0] + real[1]) == [f"k{i:04d}" for i in range(total)]
        repeats = sum(rep for r in ranks for e, _, rep in r["seen"] if e == epoch)
        assert repeats == 1
