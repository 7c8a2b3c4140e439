"""suite.names, the registry's names as plain data for the CLI's early checks, cannot drift
from the registry itself."""

from __future__ import annotations

import pytest

from suite import names


@pytest.mark.parametrize("table", list(names.from_registry()))
def test_the_name_table_is_the_registry(table: str) -> None:
    assert getattr(names, table) == names.from_registry()[table], (
        f"suite/names.py's {table} differs from the registry: regenerate it with "
        "`python -m suite.names` and paste the tables"
    )


def test_every_component_field_has_its_table() -> None:
    from suite.config import COMPONENT_REGISTRIES, NESTED_REGISTRIES

    assert set(names.COMPONENTS) == set(COMPONENT_REGISTRIES)
    assert set(NESTED_REGISTRIES) <= set(names.NESTED)


def test_papers_are_the_folders_the_registry_imports() -> None:
    """suite reproduce checks papers against reproduce/'s folders before torch: the same set."""
    assert names.paper_folders() == tuple(sorted(names.from_registry()["PAPERS"]))


def test_a_recipe_label_passes_the_early_paper_check_and_a_bad_paper_does_not() -> None:
    from suite import targets
    from suite.errors import ConfigError

    targets.check_paper("eventgrad/mnist")  # PAPER/LABEL: the label is checked later
    with pytest.raises(ConfigError, match="did you mean 'eventgrad'"):
        targets.check_paper("eventgrd/mnist")
