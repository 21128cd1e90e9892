"""Refiner settings: typed from text (CLI, environment), checked with a message naming the setting."""
import pytest

from g4seg_core.errors import SettingError
from g4seg_core.method.config import RefinerConfig


def test_settings_from_text_are_typed_like_their_defaults():
    config = RefinerConfig.from_strings({"alpha": "0.5", "iterations": "2", "early_stop": "off", "roi": "1",
                                         "working_size": "auto", "injection_resolutions": "16,32",
                                         "discrepancy_space": "latent"})
    assert config.alpha == 0.5 and config.iterations == 2 and config.early_stop is False and config.roi is True
    assert config.working_size is None and config.injection_resolutions == (16, 32)
    assert RefinerConfig.from_strings({"working_size": "384"}).working_size == 384


@pytest.mark.parametrize("values, message", [
    ({"alpha": "lots"}, "alpha='lots' is not a valid float"),
    ({"early_stop": "maybe"}, "early_stop='maybe' is not a valid bool"),
    ({"speed": "fast"}, "unknown refiner setting 'speed'"),
    ({"beta": "1.5"}, "beta must be in"),
    ({"discrepancy_space": "pixels"}, "discrepancy_space must be one of auto, rgb, latent, features"),
    ({"hausdorff_window": "4"}, "odd number"),
    ({"prior_softness": "-1"}, "prior_softness must be >= 0"),
    ({"discrepancy_max_size": "4"}, "discrepancy_max_size must be >= 8"),
    ({"prompt_template": "a photo"}, "must contain {}"),
])
def test_bad_settings_say_which_and_why(values, message):
    with pytest.raises(SettingError, match=message.replace("(", r"\(").replace("{}", r"\{\}")):
        RefinerConfig.from_strings(values)
