"""Vendor peak rates of known accelerators, for reading results as fractions of a machine.

The in-run ceilings of a results file (``timing.ceilings``: the step's GEMMs timed alone, a
stream copy) are what a run is measured against; these datasheet peaks are for reports, to say how
far those ceilings are from the hardware's. Dense (no structured sparsity) tensor-core rates,
boost clocks, SXM/OAM parts; TF32 and BF16 are tensor-core rates.
"""

from __future__ import annotations

# name -> TFLOP/s per precision, HBM bandwidth in TB/s, source
PEAKS: dict[str, dict[str, float | str]] = {
    "NVIDIA A100-SXM4-80GB": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "hbm_tbps": 2.039,
                              "source": "NVIDIA A100 datasheet"},
    "NVIDIA H100 80GB HBM3": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "hbm_tbps": 3.35,
                              "source": "NVIDIA H100 SXM datasheet"},
    "NVIDIA H100 PCIe": {"fp32": 51.2, "tf32": 378.0, "bf16": 756.0, "hbm_tbps": 2.0,
                         "source": "NVIDIA H100 PCIe datasheet"},
    "NVIDIA H100 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "hbm_tbps": 3.9,
                        "source": "NVIDIA H100 NVL datasheet"},
    "NVIDIA H200": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "hbm_tbps": 4.8,
                    "source": "NVIDIA H200 SXM datasheet"},
    "NVIDIA GH200 480GB": {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "hbm_tbps": 4.0,
                           "source": "NVIDIA GH200 datasheet (H100 96 GB HBM3)"},
    "AMD Instinct MI250X": {"fp32": 47.9, "tf32": 95.7, "bf16": 383.0, "hbm_tbps": 3.2,
                            "source": "AMD MI250X datasheet (both GCDs; matrix FP32 for tf32)"},
    "AMD Instinct MI300X": {"fp32": 163.4, "tf32": 653.7, "bf16": 1307.4, "hbm_tbps": 5.3,
                            "source": "AMD MI300X datasheet"},
}


def peak_for(gpu_name: str | None) -> dict[str, float | str] | None:
    """The entry whose name is contained in (or contains) the reported GPU name, if any."""
    if not gpu_name:
        return None
    lowered = gpu_name.lower()
    for name, entry in PEAKS.items():
        if name.lower() in lowered or lowered in name.lower():
            return entry
    return None
