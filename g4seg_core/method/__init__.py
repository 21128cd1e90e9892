"""G4Seg on Stable Diffusion: weights (`loading`), the model and its calls (`model`), attention
processors (`attention`), the refiner and its settings (`refiner`, `config`, `roi`,
`discrepancy`), the text-only segmenters (`textseg`) and the tiny test model (`tiny`)."""
