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
    reg.register_method(MethodSpec("m", "s", "paper", build=lambda cfg: None))
    with pytest.raises(ValueError, match="already registered"):
        reg.register_method(MethodSpec("m", "s", "paper", build=lambda cfg: None))
    with pytest.raises(ValueError, match="unknown suite"):
        reg.register_method(MethodSpec("x", "nope", "paper", build=lambda cfg: None))
    with pytest.raises(UserInputError, match="choose from: m"):
        reg.method("s", "other")
    with pytest.raises(UserInputError, match="choose from: s"):
        reg.suite("other")


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


def test_config_hash_is_stable_and_sensitive():
    a = config.resolve({"toy": Toy}, {}, [])
    b = config.resolve({"toy": Toy}, {}, ["toy.epochs=4"])
    assert config.config_hash(a) == config.config_hash(config.resolve({"toy": Toy}, {}, []))
    assert config.config_hash(a) != config.config_hash(b)
