"""Loading the user's model: an import spec for the factory plus safe weights."""

from legocompile.model.loader import import_object, load_model, load_state_dict

__all__ = ["import_object", "load_model", "load_state_dict"]
