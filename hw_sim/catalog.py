"""A deterministic simulated hospital item dictionary (商品字典) shared by the simulators and the demo."""

from __future__ import annotations

import random
from dataclasses import dataclass

from hw_sim.udi_gen import make_gtin

_ITEMS = [
    ("冠脉药物洗脱支架", "3.0x18mm", "微创医疗", 589000),
    ("冠脉球囊扩张导管", "2.5x15mm", "乐普医疗", 168000),
    ("人工髋关节股骨柄", "12#", "威高骨科", 1245000),
    ("人工膝关节胫骨平台", "M", "爱康医疗", 986000),
    ("人工晶状体", "+21.0D", "爱尔康", 128000),
    ("心脏起搏器", "双腔", "美敦力", 3650000),
    ("可吸收止血纱布", "5x7.5cm", "强生", 21800),
    ("一次性吻合器", "29mm", "天臣医疗", 212000),
    ("椎弓根螺钉", "6.5x45mm", "大博医疗", 78000),
    ("外周血管支架", "8x60mm", "先健科技", 756000),
    ("中心静脉导管", "双腔7Fr", "贝朗", 36800),
    ("疝修补补片", "10x15cm", "巴德", 245000),
    ("人工耳蜗", "CI24RE", "科利耳", 18900000),
    ("腔静脉滤器", "可回收", "先健科技", 1380000),
    ("骨水泥", "40g", "史赛克", 98000),
    ("导引导丝", "0.014in 190cm", "泰尔茂", 52000),
]


@dataclass(frozen=True, slots=True)
class SimCatalogItem:
    gtin: str
    item_code: str
    charge_code: str
    name: str
    spec: str
    manufacturer: str
    price_fen: int
    chargeable: bool = True
    high_value: bool = True

    def row(self) -> tuple[str, str, str, str, str, str, int, int, int]:
        return (self.gtin, self.item_code, self.charge_code, self.name, self.spec, self.manufacturer,
                self.price_fen, int(self.chargeable), int(self.high_value))


def sim_catalog(seed: int = 20261123) -> list[SimCatalogItem]:
    """The same catalogue for the same seed, on every machine."""
    rng = random.Random(seed)
    out = []
    for i, (name, spec, maker, price) in enumerate(_ITEMS, start=1):
        out.append(
            SimCatalogItem(
                gtin=make_gtin(rng),
                item_code=f"HC{i:05d}",
                charge_code=f"3310{i:04d}",
                name=name,
                spec=spec,
                manufacturer=maker,
                price_fen=price,
            )
        )
    return out
