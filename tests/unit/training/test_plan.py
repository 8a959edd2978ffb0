from loraplane.training import plan


def test_total_steps_from_epochs_or_max_steps():
    assert plan.total_steps(10, 4, 1, 1, None) == 3
    assert plan.total_steps(10, 4, 2, 2, None) == 3  # 6 micro-batches / 2
    assert plan.total_steps(10, 4, 1, 0.5, None) == 2
    assert plan.total_steps(10, 4, 1, 1, 7) == 7


def test_micro_batches_cover_each_epoch_once_and_are_pure():
    n, bs = 10, 4
    first = [plan.micro_batch(i, n, bs, seed=5) for i in range(3)]
    assert sorted(x for b in first for x in b) == list(range(n))
    assert first == [plan.micro_batch(i, n, bs, seed=5) for i in range(3)]
    second = [plan.micro_batch(i, n, bs, seed=5) for i in range(3, 6)]
    assert sorted(x for b in second for x in b) == list(range(n)) and second != first


def test_step_micro_batches_continue_after_a_restart():
    whole = [plan.step_micro_batches(s, 2, 9, 2, 0) for s in range(6)]
    assert [plan.step_micro_batches(s, 2, 9, 2, 0) for s in range(3, 6)] == whole[3:]


def test_lr_factor_shapes():
    assert plan.lr_factor(0, 10, 0, "linear") == 1.0
    assert plan.lr_factor(5, 10, 0, "linear") == 0.5
    assert plan.lr_factor(0, 10, 3, "linear") == 0.25 and plan.lr_factor(2, 10, 3, "linear") == 0.75
    assert plan.lr_factor(7, 10, 0, "constant") == 1.0
    assert abs(plan.lr_factor(5, 10, 0, "cosine") - 0.5) < 1e-9
    assert plan.lr_factor(10, 10, 0, "cosine") == 0.0
