"""Suite parsing and validation: every mistake names its line and the valid choices."""
import pytest

from bench.api import UserError
from bench.suite import load_suite, parse_suite, shipped_suites

GOOD = """\
name: t
datasets: [{name: synthetic, n: 100}]
seeds: [0, 1]
train:
  - trainer: standard
    archs: [{hidden: [4], activation: relu}]
    params: {epochs: 1}
    grid: {lr: [0.001, 0.01]}
queries:
  - {p: 2}
  - {p: inf, target: [0, 1]}
verify:
  - trivial
  - verifier: lower
    params: {samples: 10}
"""


def test_good_suite_expands_grid(tmp_path):
    s = parse_suite(GOOD)
    jobs = s.train_jobs(str(tmp_path))
    assert len(jobs) == 2 * 2  # lr grid x seeds
    assert len({j.key for j in jobs}) == 4
    net = {"id": "n", "net_hash": "abc", "path": "x"}
    assert len(s.verify_jobs(net)) == 2 * 2  # verifiers x queries


def test_eps_may_be_written_in_pixel_units():
    s = parse_suite(GOOD + "certify:\n  eps: {2: [36/255, '72/255', 0.5], inf: [1/255]}\n")
    assert s.certify_eps == {"2": [36 / 255, 72 / 255, 0.5], "inf": [1 / 255]}


@pytest.mark.parametrize("text,line,words", [
    (GOOD.replace("seeds:", "sedes:"), 3, ["unknown key 'sedes'", "seeds"]),
    (GOOD.replace("trainer: standard", "trainer: standrd"), 5, ["unknown trainer 'standrd'", "standard"]),
    (GOOD.replace("  - trivial", "  - trivail"), 13, ["unknown verifier 'trivail'", "trivial"]),
    (GOOD.replace("{samples: 10}", "{sample: 10}"), 15, ["unknown parameter 'sample'", "samples"]),
    (GOOD.replace("{epochs: 1}", "{epochs: one}"), 7, ["'epochs' must be int"]),
    (GOOD.replace("name: synthetic", "name: imagenet"), 2, ["unknown data set 'imagenet'", "digits"]),
    (GOOD.replace("{p: 2}", "{p: 3}"), 10, ["p=3", "1, 2, inf"]),
    (GOOD.replace("activation: relu", "activation: swish"), 6, ["unknown activation 'swish'", "relu"]),
    (GOOD.replace("params: {epochs: 1}", "params: {epochs: 1"), None, ["malformed YAML"]),
    (GOOD + "certify:\n  eps: {2: [36/255, x/255]}\n", 17, ["bad eps grid"]),
    (GOOD + "certify:\n  eps: [-0.1]\n", 17, ["bad eps grid", "-0.1"]),
])
def test_errors_name_the_line(text, line, words):
    with pytest.raises(UserError) as e:
        parse_suite(text)
    msg = str(e.value)
    if line is not None:
        assert msg.startswith(f"line {line}:"), msg
    for w in words:
        assert w in msg, msg
    assert "\n" not in msg


def test_unknown_suite_lists_shipped():
    with pytest.raises(UserError, match="unknown suite 'nope'.*digits"):
        load_suite("nope")


def test_shipped_suites_parse():
    assert {"smoke", "digits"} <= set(shipped_suites())
    for name in shipped_suites():
        s = load_suite(name)
        assert (s.train or s.networks) and s.verify


def test_a_box_center_of_one_number_fills_every_input():
    """{center: 0.5, radius: 0.5}: the box of all images [0, 1]^n, sized to each network."""
    s = parse_suite(GOOD.replace("  - {p: 2}\n", "  - {p: 2, domain: {center: 0.5, radius: 0.5}}\n"))
    jobs = s.verify_jobs({"id": "n", "net_hash": "abc", "path": "x", "input_shape": "[3, 2, 2]"})
    boxes = {j.query.domain for j in jobs if j.query.domain != "global"}
    assert boxes == {((0.5,) * 12, 0.5)}


def test_cifar_full_trains_convnetm_with_prach_et_al_s_schedules():
    from bench.network import arch_name
    s = load_suite("cifar-full")
    jobs = {j.trainer: j for j in s.train_jobs("/nonexistent")}
    assert set(jobs) == {"aol", "orthogonal"}
    for name, epochs in (("aol", 4404), ("orthogonal", 1128)):
        j = jobs[name]
        assert arch_name(j.arch) == "convnetM64-5x5-maxmin"
        assert j.params["epochs"] == epochs and j.params["batch_size"] == 256
        assert (j.params["optimizer"], j.params["lr_schedule"], j.params["loss"]) == ("sgd", "onecycle", "lip-ce")
        assert (j.params["margin"], j.params["temperature"], j.params["center"]) == (0.3993, 0.25, True)
    assert s.certify_eps == {"2": [36 / 255, 72 / 255, 108 / 255]}
