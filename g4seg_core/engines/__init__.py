"""Refiners behind one interface: `base.Engine` (the interface), `classic` (refiners without a
diffusion model), `factory.create_engine` (an engine by name, with the loud fallback of `auto`).
G4Seg's own engine is `g4seg_core.method.refiner.G4SegRefiner`."""
