"""The service catalog: names, prices and who each service is offered to.

The reference system's catalog, unchanged, so its clients see the same
services and the same prices.
"""

from __future__ import annotations

from dataclasses import dataclass

from medbook.contracts import Gender


@dataclass(frozen=True, slots=True)
class CatalogItem:
    name: str
    price: int
    gender: Gender | None  # None: offered to everyone

    def offered_to(self, gender: Gender) -> bool:
        return self.gender is None or self.gender is gender

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "price": self.price,
            "gender": self.gender.value if self.gender else "All",
        }


CATALOG: tuple[CatalogItem, ...] = (
    CatalogItem("General Consultation", 500, None),
    CatalogItem("Blood Test", 300, None),
    CatalogItem("X-Ray", 1200, None),
    CatalogItem("MRI Scan", 5000, None),
    CatalogItem("Dental Cleaning", 800, None),
    CatalogItem("Vaccination", 150, None),
    CatalogItem("Mammogram", 2000, Gender.FEMALE),
    CatalogItem("Prostate Exam", 1500, Gender.MALE),
)

BY_NAME: dict[str, CatalogItem] = {item.name: item for item in CATALOG}


def offered(gender: Gender | None) -> list[CatalogItem]:
    """The services offered to ``gender`` (all of them when ``gender`` is None)."""
    if gender is None:
        return list(CATALOG)
    return [item for item in CATALOG if item.offered_to(gender)]
