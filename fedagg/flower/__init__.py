"""fedagg on Flower: the rules as Message-API strategies (``strategy_for``),
the ClientApp, the typed client instruction and the message codec."""
from .callbacks import RoundCallback
from .rules import strategy_for
from .strategy import FedaggStrategy, RoundRecord

__all__ = ["FedaggStrategy", "RoundCallback", "RoundRecord", "strategy_for"]
