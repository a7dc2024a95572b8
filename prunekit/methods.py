"""The compression methods, by --method name. A method is a package (posttrain/, cofi/) with a settings
dataclass and compress(model, task, budget, config) -> Compressed, described by a prunekit.harness.Method;
a third one goes beside them and into this table."""
from .cofi import METHOD as COFI
from .posttrain import METHOD as POST_TRAINING

METHODS = {m.name: m for m in (POST_TRAINING, COFI)}
DEFAULT_METHOD = POST_TRAINING.name  # seconds, where CoFi takes hours
