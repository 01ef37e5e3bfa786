from dataclasses import dataclass

import pytest

from benchmark import config
from benchmark.registry import MethodSpec, Registry, SuiteSpec
from cvpdl.errors import UserInputError


@dataclass(frozen=True)
class Toy:
    epochs: int = 3
    lr: float = 0.1
    flag: bool = False
    name: str = "a"
    sizes: tuple[int, int] = (1, 2)


def suite(name="s"):
    return SuiteSpec(name=name, question="q", dataset="d", config={"toy": Toy}, profiles={"quick": {}})


def test_registry_refuses_duplicates_and_lists_choices():
    reg = Registry()
    reg.register_suite(suite())
    with pytest.raises(ValueError, match="already registered"):
        reg.register_suite(suite())
    reg.register_method(MethodSpec("m", "s", "paper", from_config=lambda cfg: None))
    with pytest.raises(ValueError, match="already registered"):
        reg.register_method(MethodSpec("m", "s", "paper", from_config=lambda cfg: None))
    with pytest.raises(ValueError, match="unknown suite"):
        reg.register_method(MethodSpec("x", "nope", "paper", from_config=lambda cfg: None))
    with pytest.raises(UserInputError, match="choose from: m"):
        reg.method("s", "other")
    with pytest.raises(UserInputError, match="choose from: s"):
        reg.suite("other")


def test_the_decorator_registers_a_from_config_typed_by_its_suite():
    reg = Registry()
    reg.register_suite(SuiteSpec(name="s", question="q", dataset="d", config={}, profiles={"quick": {}},
                                 method_type=Toy))

    @reg.register("s", "good", paper="p", config={"toy": Toy})
    def good(cfg):
        return Toy(**cfg["toy"])

    @reg.register("s", "bad", paper="p")
    def bad(cfg):
        return "not a Toy"

    spec = reg.method("s", "good")
    assert (spec.from_config, spec.config, reg.method_names("s")) == (good, {"toy": Toy}, ["good", "bad"])
    assert reg.build(spec, {"toy": {"epochs": 7}}) == Toy(epochs=7)
    with pytest.raises(TypeError, match="method 'bad' of suite 's': from_config returned str, not the suite's Toy"):
        reg.build(reg.method("s", "bad"), {})
    with pytest.raises(ValueError, match="already registered"):
        reg.register("s", "good", paper="p")(good)


def test_overrides_are_typed_and_validated():
    cfg = config.resolve({"toy": Toy}, {"toy.epochs": 5},
                         ["toy.lr=0.5", "toy.flag=true", "toy.name=b", "toy.sizes=3,4"])
    assert cfg["toy"] == {"epochs": 5, "lr": 0.5, "flag": True, "name": "b", "sizes": [3, 4]}
    assert config.section_config(cfg, "toy", Toy) == Toy(5, 0.5, True, "b", (3, 4))
    with pytest.raises(UserInputError, match="unknown config key 'toy.nope'"):
        config.resolve({"toy": Toy}, {}, ["toy.nope=1"])
    with pytest.raises(UserInputError, match="unknown config section"):
        config.resolve({"toy": Toy}, {}, ["other.epochs=1"])
    with pytest.raises(UserInputError, match="cannot read 'x' as int"):
        config.resolve({"toy": Toy}, {}, ["toy.epochs=x"])
    with pytest.raises(UserInputError, match="section.key=value"):
        config.resolve({"toy": Toy}, {}, ["epochs"])


def test_values_are_checked_for_shape_and_range():
    with pytest.raises(UserInputError, match=r"^toy.sizes must be tuple\[int, int\], got \[7\]"):
        config.resolve({"toy": Toy}, {}, ["toy.sizes=7"])
    with pytest.raises(UserInputError, match="^toy.epochs must be at least 1, got 0$"):
        config.resolve({"toy": Toy}, {}, ["toy.epochs=0"])
    with pytest.raises(UserInputError, match="^toy.lr must be positive, got 0.0$"):
        config.resolve({"toy": Toy}, {}, ["toy.lr=0"])
    with pytest.raises(UserInputError, match=r"^toy.sizes must not be negative, got \[-1, 2\]$"):  # per element
        config.resolve({"toy": Toy}, {}, ["toy.sizes=-1,2"])
    assert config.resolve({"toy": Toy}, {}, ["toy.epochs=1", "toy.lr=1e-9"])["toy"]["epochs"] == 1


def test_config_file_values_take_the_default_types(tmp_path):
    (tmp_path / "c.yaml").write_text("toy:\n  lr: 1e-4\n  epochs: 7\n  sizes: [5, 6]\n")  # YAML reads 1e-4 as text
    cfg = config.resolve({"toy": Toy}, {}, ["toy.epochs=8"], config.read_config_file(tmp_path / "c.yaml"))
    assert cfg["toy"] == {"epochs": 8, "lr": 1e-4, "flag": False, "name": "a", "sizes": [5, 6]}
    (tmp_path / "bad.yaml").write_text("toy: [1, 2]\n")
    with pytest.raises(UserInputError, match="expected a mapping of sections"):
        config.read_config_file(tmp_path / "bad.yaml")


def test_config_hash_is_stable_and_sensitive():
    a = config.resolve({"toy": Toy}, {}, [])
    b = config.resolve({"toy": Toy}, {}, ["toy.epochs=4"])
    assert config.config_hash(a) == config.config_hash(config.resolve({"toy": Toy}, {}, []))
    assert config.config_hash(a) != config.config_hash(b)


def test_which_knobs_a_populations_members_may_differ_in():
    """A float the loss or the noise reads, or the recipe's lr and weight decay: never a value that shapes the model
    (FitNet's hint stage, RegionCLIP's input scale), the schedule (epochs), another method's section, or what the
    batched model holds (detr's dropout: member 0's)."""
    import benchmark.suites  # noqa: F401  (registers the suites)
    from benchmark.invocation import member_knob
    from benchmark.registry import REGISTRY

    kd, detr = REGISTRY.suite("kd"), REGISTRY.suite("detr")
    fitnet, dn = REGISTRY.method("kd", "fitnet"), REGISTRY.method("detr", "dn_dab_detr")
    assert [member_knob(kd, fitnet, k) for k in ("fitnet.hint_weight", "train.lr", "train.weight_decay")] == [True] * 3
    assert not any(member_knob(kd, fitnet, k) for k in ("fitnet.hint_stage", "train.epochs", "gld.beta"))
    assert [member_knob(detr, dn, k) for k in ("loss.bbox", "dn.box_noise", "train.lr")] == [True] * 3
    assert not any(member_knob(detr, dn, k) for k in ("dn.groups", "dab.dropout", "model.d_model"))
    ovd, regionclip = REGISTRY.suite("ovd"), REGISTRY.method("ovd", "regionclip")
    assert all(member_knob(ovd, regionclip, f"regionclip.{k}") for k in ("lr", "temperature", "keep_threshold"))
    assert not any(member_knob(ovd, regionclip, k) for k in ("regionclip.image_scale", "clip.lr", "regionclip.epochs"))
