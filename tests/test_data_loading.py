"""Training data: the cache as a dataset, one-bucket batches, equal batch counts on every rank, exact resume.

Run: pytest tests/test_data_loading.py
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ltxc.data.batch_sampler import BucketBatchSampler
from ltxc.data.cache import Cache
from ltxc.data.dataset import CacheDataset, collate
from ltxc.data.loader import make_loader, restore_sampler
from ltxc.errors import UserError

HEADER = {"format": 1, "spec": {"name": "m", "hash": "abc"}, "null_conditioning": "null.safetensors"}
TEXT = (6, 4)  # [L, D] of the fake text embeddings


def bucket_shape(bucket: str) -> list[int]:
    """A latent shape [C, F, H, W] that differs per bucket, as a real cache's would."""
    width, height, frames = (int(x) for x in bucket.split("x"))
    return [2, (frames - 1) // 8 + 1, height // 32, width // 32]


def write_cache(root: Path, sizes: dict[str, int], finalise: bool = True) -> Cache:
    """A cache written through `Cache` the way preprocessing does, with random tensors."""
    cache = Cache(root)
    cache.open(HEADER)
    generator = torch.Generator().manual_seed(0)
    cache.write_null(
        {
            "embeds": torch.randn(TEXT, generator=generator),
            "mask": torch.tensor([True, True, False, False, False, False]),
        }
    )
    order = []
    for bucket, count in sizes.items():
        for i in range(count):
            sample_id = f"{bucket}-{i}"
            shape = bucket_shape(bucket)
            tensors = {
                "latents": torch.randn(shape, generator=generator),
                "text_embeds": torch.randn(TEXT, generator=generator),
                "text_mask": torch.rand(TEXT[0], generator=generator) > 0.5,
            }
            file = cache.write_sample(sample_id, tensors, {"id": sample_id})
            record = {"id": sample_id, "bucket": bucket, "file": file, "latent_shape": shape, "fps": 25.0}
            cache.append("rank0", record)
            order.append(sample_id)
    if finalise:
        cache.finalise(order, [])
    return cache


@pytest.fixture
def dataset(tmp_path: Path) -> CacheDataset:
    """7 samples in 2 buckets: with batch size 2 that is 4 batches per epoch, one of them wrapped."""
    write_cache(tmp_path / "cache", {"64x32x9": 4, "96x64x1": 3})
    return CacheDataset(tmp_path / "cache")


# -- sampler ---------------------------------------------------------------------------------------------
def bucket_list(sizes: list[int]) -> list[str]:
    """Bucket keys per index, round-robin, so that the indices of one bucket are not contiguous."""
    slots = sorted((j, i) for i, size in enumerate(sizes) for j in range(size))
    return [f"b{i}" for _, i in slots]


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 13), min_size=1, max_size=5),
    batch_size=st.integers(1, 5),
    world_size=st.integers(1, 6),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 3),
)
def test_sampler_properties(sizes: list[int], batch_size: int, world_size: int, seed: int, epoch: int) -> None:
    buckets = bucket_list(sizes)
    ranks = [
        BucketBatchSampler(buckets, batch_size, rank=r, world_size=world_size, seed=seed) for r in range(world_size)
    ]
    per_rank = [s.rank_batches(epoch) for s in ranks]
    global_size = batch_size * world_size
    global_count = sum(math.ceil(size / global_size) for size in sizes)
    # Equal batch counts on every rank: the property that keeps collectives from deadlocking.
    assert [len(b) for b in per_rank] == [global_count] * world_size
    assert all(s.batches_per_epoch == global_count for s in ranks)
    seen: Counter[int] = Counter()
    for batch in itertools.chain.from_iterable(per_rank):
        assert len(batch) == batch_size
        assert len({buckets[i] for i in batch}) == 1, f"batch {batch} mixes buckets"
        seen.update(batch)
    assert set(seen) == set(range(len(buckets))), "a sample was dropped this epoch"
    # Concatenating the ranks' slices step by step gives back the global batches, in order.
    global_batches = ranks[0].epoch_batches(epoch)
    assert len(global_batches) == global_count
    stitched = [[index for r in range(world_size) for index in per_rank[r][i]] for i in range(global_count)]
    assert stitched == global_batches


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    seed=st.integers(0, 1000),
    epoch=st.integers(0, 2),
)
def test_the_global_batch_not_the_layout_decides_what_each_step_sees(sizes: list[int], seed: int, epoch: int) -> None:
    """One process with batch 2 sees exactly what two ranks with batch 1 see together, step by step."""
    buckets = bucket_list(sizes)
    single = BucketBatchSampler(buckets, 2, seed=seed).rank_batches(epoch)
    r0, r1 = (BucketBatchSampler(buckets, 1, rank=r, world_size=2, seed=seed).rank_batches(epoch) for r in (0, 1))
    assert single == [a + b for a, b in zip(r0, r1, strict=True)]


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    taken=st.integers(0, 12),
)
def test_resume_with_another_layout_of_the_same_global_batch(sizes: list[int], taken: int) -> None:
    buckets = bucket_list(sizes)
    old = [BucketBatchSampler(buckets, 1, rank=r, world_size=2, seed=3) for r in range(2)]
    taken = min(taken, old[0].batches_per_epoch)  # stay within epoch 0
    for sampler in old:
        list(itertools.islice(iter(sampler), taken))
    assert old[0].state_dict() == old[1].state_dict(), "ranks must agree on the position"
    new = BucketBatchSampler(buckets, 2, seed=3)
    new.load_state_dict(old[0].state_dict())
    assert rest_of_epoch(new, 0) == BucketBatchSampler(buckets, 2, seed=3).rank_batches(0)[taken:]


def rest_of_epoch(sampler: BucketBatchSampler, epoch: int) -> list[list[int]]:
    """What the sampler yields from its position up to the end of `epoch`."""
    out = []
    for batch in iter(sampler):
        if sampler.epoch != epoch:
            break
        out.append(batch)
    return out


def test_same_seed_same_order_other_epoch_or_seed_another() -> None:
    buckets = bucket_list([17, 11, 9])
    a = BucketBatchSampler(buckets, 2, seed=5)
    b = BucketBatchSampler(buckets, 2, seed=5)
    assert a.epoch_batches(0) == b.epoch_batches(0)
    assert list(itertools.islice(iter(a), 30)) == list(itertools.islice(iter(b), 30))
    assert a.epoch_batches(0) != a.epoch_batches(1)
    assert a.epoch_batches(0) != BucketBatchSampler(buckets, 2, seed=6).epoch_batches(0)
    # Batch order is shuffled across buckets, not served bucket after bucket.
    runs = [key for key, _ in itertools.groupby(buckets[batch[0]] for batch in a.epoch_batches(0))]
    assert len(runs) > 3


def test_two_ranks_are_disjoint_within_a_global_batch() -> None:
    buckets = ["a"] * 8 + ["b"] * 4  # global batch 4: 3 global batches, none wrapped
    r0, r1 = (BucketBatchSampler(buckets, 2, rank=r, world_size=2, seed=1) for r in (0, 1))
    ids0 = {i for b in r0.rank_batches(0) for i in b}
    ids1 = {i for b in r1.rank_batches(0) for i in b}
    assert ids0.isdisjoint(ids1) and ids0 | ids1 == set(range(12))
    odd = ["a"] * 6 + ["b"] * 4  # bucket a: 6 samples = 1.5 global batches; the second wraps within a
    r0, r1 = (BucketBatchSampler(odd, 2, rank=r, world_size=2, seed=1) for r in (0, 1))
    b0, b1 = r0.rank_batches(0), r1.rank_batches(0)
    assert len(b0) == len(b1) == 3
    served = Counter(i for b in b0 + b1 for i in b)
    assert set(served) == set(range(10)) and served.total() == 12  # two wrapped repeats, all from bucket a
    assert all(i < 6 for i, n in served.items() if n > 1)


def test_partial_batches_wrap_within_their_bucket() -> None:
    batches = BucketBatchSampler(["x", "y", "y", "y", "y", "y"], 4).epoch_batches(0)
    assert len(batches) == 3 and [0, 0, 0, 0] in batches  # a bucket of one fills its batch with itself
    a, b = (batch for batch in batches if batch != [0, 0, 0, 0])
    full, wrapped = (a, b) if b[1:] == a[:3] else (b, a)
    assert wrapped[1:] == full[:3], "the last batch should wrap around to the bucket's first samples"
    assert set(full) | set(wrapped) == {1, 2, 3, 4, 5} and len(set(full)) == 4


def test_iteration_crosses_epochs_and_resumes_from_state() -> None:
    buckets = bucket_list([5, 3])
    sampler = BucketBatchSampler(buckets, 2, rank=1, world_size=2, seed=9)
    per_epoch = sampler.batches_per_epoch
    expected = sampler.rank_batches(0) + sampler.rank_batches(1) + sampler.rank_batches(2)
    stream = iter(sampler)
    head = list(itertools.islice(stream, per_epoch + 1))
    assert head == expected[: per_epoch + 1]
    assert sampler.state_dict()["epoch"] == 1 and sampler.state_dict()["position"] == 1
    fresh = BucketBatchSampler(buckets, 2, rank=1, world_size=2, seed=9)
    fresh.load_state_dict(sampler.state_dict())
    assert list(itertools.islice(iter(fresh), 2 * per_epoch - 1)) == expected[per_epoch + 1 :]
    assert all(isinstance(v, int) for v in sampler.state_dict().values())


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((["a"], 0), {}, "batch size"),
        ((["a"], 2), {"rank": 2, "world_size": 2}, "rank must be in 0..1"),
        ((["a"], 2), {"world_size": 0}, "world size"),
        (([], 2), {}, "empty"),
        ((["a", ""], 2), {}, "sample 1"),
    ],
)
def test_sampler_rejects_bad_arguments(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BucketBatchSampler(*args, **kwargs)


def test_sampler_refuses_state_from_other_data_or_global_batch() -> None:
    state = BucketBatchSampler(["a"] * 4, 2).state_dict()
    with pytest.raises(ValueError, match="4 samples then, 5 now"):
        BucketBatchSampler(["a"] * 5, 2).load_state_dict(state)
    with pytest.raises(ValueError, match=r"global batch 2 .* when this state was saved, 3 now"):
        BucketBatchSampler(["a"] * 4, 3).load_state_dict(state)
    BucketBatchSampler(["a"] * 4, 1, rank=1, world_size=2).load_state_dict(state)  # same global batch: fine
    with pytest.raises(ValueError, match="lacks position"):
        BucketBatchSampler(["a"] * 4, 2).load_state_dict({"epoch": 0})


# -- dataset and collate ---------------------------------------------------------------------------------
def test_dataset_returns_the_cached_tensors_exactly(dataset: CacheDataset) -> None:
    cache = Cache(dataset.root)
    assert len(dataset) == 7
    assert dataset.buckets() == ["64x32x9"] * 4 + ["96x64x1"] * 3
    for index, record in enumerate(dataset.records):
        item = dataset[index]
        stored = cache.load_sample(record["id"])
        for key in ("latents", "text_embeds", "text_mask"):
            assert item[key].dtype == stored[key].dtype and torch.equal(item[key], stored[key])
        assert list(item["latents"].shape) == bucket_shape(record["bucket"])
        assert (item["index"], item["id"], item["fps"], item["bucket"]) == (index, record["id"], 25.0, record["bucket"])
    null = dataset.null_conditioning()
    assert set(null) == {"text_embeds", "text_mask"}
    assert torch.equal(null["text_embeds"], cache.load_null()["text_embeds"])
    assert null["text_mask"].tolist() == [True, True, False, False, False, False]


def test_collate_stacks_one_bucket_and_refuses_mixed_shapes(dataset: CacheDataset) -> None:
    batch = collate([dataset[2], dataset[0]])
    assert batch["latents"].shape == (2, *bucket_shape("64x32x9"))
    assert torch.equal(batch["latents"][0], dataset[2]["latents"])
    assert batch["text_mask"].dtype == torch.bool and batch["text_embeds"].shape == (2, *TEXT)
    assert batch["index"] == [2, 0] and batch["id"] == ["64x32x9-2", "64x32x9-0"] and batch["fps"] == [25.0, 25.0]
    with pytest.raises(ValueError, match=r"mixes latents shapes \(64x32x9-0 \[2, 2, 1, 2\], 96x64x1-0"):
        collate([dataset[0], dataset[4]])


def test_dataset_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such cache directory"):
        CacheDataset(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match=r"not an ltxc cache \(no cache.json\)"):
        CacheDataset(tmp_path / "plain")
    write_cache(tmp_path / "unfinished", {"64x32x9": 2}, finalise=False)
    with pytest.raises(UserError, match="preprocessing did not finish"):
        CacheDataset(tmp_path / "unfinished")
    resumed = write_cache(tmp_path / "resumed", {"64x32x9": 2})  # finished once, then a new run was killed
    resumed.append("rank0", {"id": "late", "bucket": "64x32x9", "file": "samples/64x32x9-0.safetensors"})
    with pytest.raises(UserError, match="preprocessing did not finish"):
        CacheDataset(tmp_path / "resumed")
    empty = Cache(tmp_path / "empty")
    empty.open(HEADER)
    empty.write_null({"embeds": torch.zeros(TEXT), "mask": torch.zeros(TEXT[0], dtype=torch.bool)})
    empty.finalise([], [])
    with pytest.raises(UserError, match="holds no samples"):
        CacheDataset(tmp_path / "empty")
    broken = write_cache(tmp_path / "broken", {"64x32x9": 2})
    broken.sample_path("64x32x9-1").unlink()
    with pytest.raises(UserError, match=r"1 sample file\(s\) .* missing \(samples/64x32x9-1.safetensors\)"):
        CacheDataset(tmp_path / "broken")


# -- loader and resume -----------------------------------------------------------------------------------
def take(loader: object, count: int) -> list[list[int]]:
    """The indices of the next `count` batches."""
    stream = iter(loader)  # type: ignore[call-overload]
    return [next(stream)["index"] for _ in range(count)]


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_loader_continues_with_the_exact_next_batch(dataset: CacheDataset, workers: int) -> None:
    total = 10  # 4 batches per epoch: the run spans two epoch boundaries
    straight = take(make_loader(dataset, 2, rank=0, world_size=1, seed=4, workers=workers), total)
    assert Counter(i for b in straight[:4] for i in b).keys() == set(range(7))
    assert straight[:4] != straight[4:8], "epochs 0 and 1 came out in the same order"
    for k in (3, 4):  # mid-epoch (workers have prefetched into the next epoch), and right at the boundary
        loader = make_loader(dataset, 2, rank=0, world_size=1, seed=4, workers=workers)
        head = take(loader, k)
        state = loader.state_dict()
        resumed = make_loader(dataset, 2, rank=0, world_size=1, seed=4, workers=workers)
        resumed.load_state_dict(state)
        assert head + take(resumed, total - k) == straight, f"resume after {k} batches drifted"
        # The portable form, as the runner resumes: the sampler's position derived from the batches consumed,
        # into a loader with another worker count.
        portable = make_loader(dataset, 2, rank=0, world_size=1, seed=4, workers=2 - workers)
        epoch, position = divmod(k, portable.batch_sampler.batches_per_epoch)
        restore_sampler(portable, {"epoch": epoch, "position": position})
        assert head + take(portable, total - k) == straight


def test_loader_batches_carry_the_dataset_tensors(dataset: CacheDataset) -> None:
    loader = make_loader(dataset, 3, rank=1, world_size=2, seed=0, pin_memory=True)
    assert loader.pin_memory == torch.cuda.is_available()
    batch = next(iter(loader))
    assert len({dataset.buckets()[i] for i in batch["index"]}) == 1
    assert torch.equal(batch["latents"], torch.stack([dataset[i]["latents"] for i in batch["index"]]))
    assert batch["index"] == BucketBatchSampler(dataset.buckets(), 3, rank=1, world_size=2).rank_batches(0)[0]
