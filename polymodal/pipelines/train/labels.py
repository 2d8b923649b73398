"""The classes a run learns, taken from the data: `num_classes` and the class names come from
the datasets' indexes when the config does not give them, and a config that disagrees with its
datasets, or train and validation datasets with different classes, is a one-line `ConfigError`
before any model is built (once, `num_classes = 2` on a 3-class dataset trained on two-thirds
of it and exited 0; a/b/c against cat/dog validated at 0.57 without a word).

`data.check_classes = false` is the override for the rare deliberate case (a validation set
of a subset of the classes that names them differently, say).
"""

from __future__ import annotations

from dataclasses import dataclass

from polymodal.datasets.index import ShardIndex
from polymodal.datasets.shardlist import open_dataset
from polymodal.errors import ConfigError
from polymodal.pipelines.train.config import TrainConfig


@dataclass(frozen=True)
class Classes:
    """What one dataset's index says of its classes: their number (the highest class id + 1)
    and their names, where it knows them."""

    count: int | None
    names: tuple[str, ...] | None

    @classmethod
    def of(cls, index: ShardIndex) -> Classes:
        if index.classes:
            return cls(len(index.classes), tuple(index.classes))
        ids = [int(label) for label in index.labels if label.strip().lstrip("-").isdigit()]
        whole = ids and len(ids) == len(index.labels) and min(ids) >= 0
        return cls(max(ids) + 1 if whole else None, None)

    def describe(self) -> str:
        if self.names:
            shown = ", ".join(self.names[:8]) + (", ..." if len(self.names) > 8 else "")
            return f"{self.count} classes ({shown})"
        return f"class ids up to {(self.count or 0) - 1}"


def settle_classes(config: TrainConfig) -> None:
    """Set `data.num_classes` from the training data when it is 0, and check that the config,
    the training sources and the validation set agree on the classes. Tasks without labels
    (autoencode, mlm) are left alone."""
    if config.task not in ("classification", "multilabel"):
        return
    d = config.data
    train = [
        (f"data.train {p}", _classes(p, config, d.num_classes == 0)) for p in config.train_paths()
    ]
    known = [(where, c) for where, c in train if c is not None and c.count is not None]
    if d.num_classes == 0:
        if not known:
            raise ConfigError(
                "data.num_classes: the training data's index lists no classes (no class names, "
                "no whole-number labels): set data.num_classes"
            )
        d.num_classes = max(c.count or 0 for _, c in known)
    if not d.check_classes:
        return
    val = [(f"data.val {d.val}", _classes(d.val, config, False))] if d.val else []
    for where, classes in [*train, *val]:
        if classes is not None:
            _check(where, classes, d.num_classes, known[0] if known else None)


def _classes(source: str, config: TrainConfig, needed: bool) -> Classes | None:
    """The classes of `source`, or None where it cannot be opened here and they are not
    `needed` (a model evaluated or exported on a machine without the training data; a run
    that reads it says so when it opens its streams)."""
    try:
        return Classes.of(open_dataset(source, config.data.remote, config.data.cache_dir or None))
    except (OSError, ValueError) as exc:
        if needed:
            raise ConfigError(f"data.num_classes: 0 takes the data's, but {exc}") from None
        return None


def _check(
    where: str, classes: Classes, num_classes: int, first: tuple[str, Classes] | None
) -> None:
    """One dataset against the config and the first training dataset that knows its
    classes."""
    override = "(data.check_classes = false if that is meant)"
    if classes.count is not None and classes.count > num_classes:
        raise ConfigError(
            f"data.num_classes: {num_classes}, but {where} has {classes.describe()}: drop "
            f"num_classes to take the data's, or fix it {override}"
        )
    if classes.names and classes.count != num_classes:
        raise ConfigError(
            f"data.num_classes: {num_classes}, but {where} names {classes.describe()} {override}"
        )
    if first is not None and classes.names and first[1].names and classes.names != first[1].names:
        raise ConfigError(
            f"{where} has {classes.describe()}, {first[0]} has {first[1].describe()}: the same "
            f"class ids would mean different classes {override}"
        )
