import math

from stim.commands import DBSCommand, OptoCommand

MS = 1_000_000
S = 1_000_000_000
def show(tag, out):
    c = out.command
    cs = None
    if c is not None:
        if isinstance(c, DBSCommand):
            cs = (f"DBS amp={c.amplitude_ma:.6g} pw={c.pulse_width_us:g} "
                  f"f={c.frequency_hz:g} contacts={c.contacts} modality={c.modality}")
        else:
            cs = (f"OPTO P={c.power_mw:.6g} targets={c.targets} pw={c.pulse_width_ms:g} "
                  f"f={c.frequency_hz:g} train_ms={c.train_ms:g} modality={c.modality}")
    print(f"{tag:>14s}: status={out.status:8s} cmd={cs} reasons={out.reasons}")

def pavg(c):
    """Time-averaged optical power of a light command (independent definition)."""
    if not isinstance(c, OptoCommand) or c.power_mw <= 0 or not c.targets:
        return 0.0
    return c.power_mw * min(1.0, c.pulse_width_ms * c.frequency_hz / 1000.0)

def tissue(events, t_end, lim):
    """First-order tissue model driven by step changes [(t, P_avg)]; returns (T_end, T_max)."""
    T, tp, P, Tmax = 0.0, events[0][0], 0.0, 0.0
    for t, p in events + [(t_end, None)]:
        steady = lim.heat_c_per_mw * P
        T = steady + (T - steady) * math.exp(-(t - tp) / S / lim.thermal_tau_s)
        Tmax = max(Tmax, T)
        tp = t
        if p is not None:
            P = p
    return T, Tmax
