"""Generation speed on a GPU: images/s of netdiff.generate at a few batch sizes and step counts,
and the UNet's own forward time per image (contiguous and channels_last). Untrained weights
(speed does not depend on them): the model is trained one step on one class's captures.

    python3 benchmarks/gpu_speed.py [CONFIG] [COUNT]     (default: compact 32; captures from .gpu/pcaps/dns)

Run on the device after benchmarks/gpu_prepare.sh; figures in docs/results.md and performance.md."""
import os, sys, time, tempfile, shutil
from pathlib import Path
import torch
import netdiff
from netdiff.bits.layout import named_layout
cfgname = sys.argv[1] if len(sys.argv) > 1 else "compact"
count = int(sys.argv[2]) if len(sys.argv) > 2 else 32
cuda = torch.cuda.is_available()
tmp = Path(tempfile.mkdtemp())
(tmp / "pcaps" / "dns").mkdir(parents=True)
for f in sorted(Path(".gpu/pcaps/dns").glob("*.pcap")):
    shutil.copy(f, tmp / "pcaps" / "dns" / f.name)
from netdiff.model.config import load_config
cfg = load_config(cfgname)
h = cfg.image.height
netdiff.pcap2img(tmp / "pcaps", tmp / "img", layout=named_layout("netdiffusion", height=h))
netdiff.train_base(tmp / "img", tmp / "model", config=cfgname, steps=1, batch_size=2, progress=False)
def timed(label, **kw):
    if cuda: torch.cuda.synchronize()
    t = time.perf_counter()
    netdiff.generate(tmp / "model", "dns", count, 0, progress=False, **kw)
    if cuda: torch.cuda.synchronize()
    s = time.perf_counter() - t
    print(f"{label}: {count / s:.2f} images/s ({s:.1f} s)", flush=True)
timed("warm-up batch 8 steps 24", batch_size=8, steps=24)
timed("batch 8 steps 24", batch_size=8, steps=24)
timed("batch 32 steps 24", batch_size=32, steps=24)
timed("batch 32 steps 12", batch_size=32, steps=12)
from netdiff.model.generate import load_pipeline
pipe = load_pipeline(tmp / "model")[0]
u = pipe.unet
dev, dt = u.device, u.dtype
for b in (8, 32):
    x = torch.randn(b, u.config.in_channels, h // 8, cfg.image.width // 8, device=dev, dtype=dt)
    c = torch.randn(b, cfg.text.max_length, cfg.unet.cross_attention_dim, device=dev, dtype=dt)
    t = torch.full((b,), 500, device=dev)
    for fmt in ("contiguous", "channels_last"):
        if fmt == "channels_last":
            u.to(memory_format=torch.channels_last); x = x.to(memory_format=torch.channels_last)
        with torch.no_grad():
            for _ in range(2): u(x, t, encoder_hidden_states=c)
            if cuda: torch.cuda.synchronize()
            t0 = time.perf_counter(); n = 5
            for _ in range(n): u(x, t, encoder_hidden_states=c)
            if cuda: torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) / n * 1000
        print(f"unet forward batch {b} {fmt}: {ms:.1f} ms, {ms / b:.2f} ms per image", flush=True)
        u.to(memory_format=torch.contiguous_format); x = x.contiguous()
