"""BigEarthNet-19 class order and the 43 -> 19 mapping, written out from the documentation table
(docs/bigearthnet.md) rather than imported from the code under test. Used by the interop tests and
the benchmark's Python reference converter."""

BEN19 = [
    "Urban fabric", "Industrial or commercial units", "Arable land", "Permanent crops", "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas", "Broad-leaved forest", "Coniferous forest", "Mixed forest",
    "Natural grassland and sparsely vegetated areas", "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub", "Beaches, dunes, sands", "Inland wetlands", "Coastal wetlands",
    "Inland waters", "Marine waters",
]
CORINE_TO_19 = {
    "Continuous urban fabric": 0, "Discontinuous urban fabric": 0, "Industrial or commercial units": 1,
    "Non-irrigated arable land": 2, "Permanently irrigated land": 2, "Rice fields": 2,
    "Vineyards": 3, "Fruit trees and berry plantations": 3, "Olive groves": 3,
    "Annual crops associated with permanent crops": 3, "Pastures": 4, "Complex cultivation patterns": 5,
    "Land principally occupied by agriculture, with significant areas of natural vegetation": 6,
    "Agro-forestry areas": 7, "Broad-leaved forest": 8, "Coniferous forest": 9, "Mixed forest": 10,
    "Natural grassland": 11, "Sparsely vegetated areas": 11, "Moors and heathland": 12,
    "Sclerophyllous vegetation": 12, "Transitional woodland/shrub": 13, "Beaches, dunes, sands": 14,
    "Inland marshes": 15, "Peatbogs": 15, "Salt marshes": 16, "Salines": 16, "Water courses": 17,
    "Water bodies": 17, "Coastal lagoons": 18, "Estuaries": 18, "Sea and ocean": 18,
}
