from diffusion.training.sampler import StepBatchSampler


def sampler(**overrides) -> StepBatchSampler:
    base = dict(batch_size=6, grad_accum=1, rank=0, world_size=1, seed=3, start_step=0, end_step=4)
    return StepBatchSampler(10, **(base | overrides))


def test_each_epoch_is_a_permutation_and_batches_cross_epochs():
    batches = list(sampler())
    indices = [i for b in batches for i, _ in b]
    assert [len(b) for b in batches] == [6, 6, 6, 6]
    assert sorted(indices[:10]) == list(range(10)) and sorted(indices[10:20]) == list(range(10))
    assert indices[:10] != indices[10:20]  # a new order per epoch
    seeds = [s for b in batches for _, s in b]
    assert len(set(seeds)) == 24  # every position gets its own augmentation seed


def test_resuming_at_a_step_replays_the_tail_exactly():
    full = list(sampler(end_step=5))
    assert list(sampler(start_step=2, end_step=5)) == full[2:]


def test_processes_and_micro_batches_split_the_same_global_batch():
    single = list(sampler(end_step=2))
    shards = [list(sampler(end_step=2, grad_accum=3, world_size=2, rank=r)) for r in range(2)]
    assert all(len(b) == 1 for s in shards for b in s)
    for step in range(2):
        together = [shards[r][step * 3 + m][0] for m in range(3) for r in range(2)]
        assert together == single[step]
