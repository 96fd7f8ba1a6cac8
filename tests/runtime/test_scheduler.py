import pytest

from nabla_dist.algorithm.requests import PolicyGrad, Reward, Rollout
from nabla_dist.runtime.scheduler import KindChooser, Ticket


def tickets(*kinds):
    # the chooser looks only at request types and order; stand-ins built without fields
    return [Ticket(i, 0, kind.__new__(kind)) for i, kind in enumerate(kinds)]


def test_largest_group_first_and_ties_go_to_the_oldest():
    chooser = KindChooser(patience=10)
    assert chooser.choose(tickets(Rollout, PolicyGrad, PolicyGrad)) is PolicyGrad
    assert KindChooser(patience=10).choose(tickets(Reward, Rollout, Rollout, Reward)) is Reward


def test_a_type_passed_over_patience_times_is_served_next():
    chooser = KindChooser(patience=2)
    pending = tickets(Rollout, PolicyGrad, PolicyGrad)
    assert [chooser.choose(pending) for _ in range(4)] == [PolicyGrad, PolicyGrad, Rollout, PolicyGrad]


def test_a_type_that_stops_waiting_starts_its_count_again():
    chooser = KindChooser(patience=2)
    assert chooser.choose(tickets(Rollout, PolicyGrad, PolicyGrad)) is PolicyGrad  # Rollout passed once
    assert chooser.choose(tickets(PolicyGrad)) is PolicyGrad  # no Rollout pending: its count is dropped
    assert chooser.choose(tickets(Rollout, PolicyGrad, PolicyGrad)) is PolicyGrad  # passed once again


def test_patience_zero_is_oldest_first_and_bad_values_are_refused():
    chooser = KindChooser(patience=0)
    assert chooser.choose(tickets(Rollout, PolicyGrad, PolicyGrad)) is Rollout
    assert chooser.choose(tickets(PolicyGrad, Rollout, Rollout)) is PolicyGrad
    with pytest.raises(ValueError, match="patience=-1"):
        KindChooser(-1)
    with pytest.raises(ValueError, match="no pending"):
        KindChooser().choose([])
