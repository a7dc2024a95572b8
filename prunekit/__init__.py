"""prunekit: structured pruning of BERT encoders that ends in a smaller, faster, exportable model.

    import prunekit
    model = prunekit.load_model("minilm", num_labels=2)      # or a fine-tuned teacher directory
    masks = prunekit.Masks(z_head=..., z_int=...)             # from CoFi, post-training, or by hand
    compact = prunekit.prune(model, masks)                    # exact: compact(x) == model(x, masks=masks)
    print(prunekit.format_report(prunekit.cost_report(compact.config, reference=model.config)))
    compact.save_pretrained("out/")                           # AutoModelForSequenceClassification loads it

    # either method end to end, as `prunekit compress` runs it (prunekit.api): the compact model and report.json's fields
    compact, report = prunekit.compress(model, train_data, eval_data, method="post-training", macs=0.5,
                                        distill_steps=1000)   # or method="cofi", target_sparsity=0.9
"""
from .api import Report, compress
from .checkpoints import load_model, register_auto_classes
from .config import PrunekitBertConfig
from .cost import cost_report, format_report, macs, param_counts
from .errors import PrunekitError
from .masks import Masks
from .model import PrunekitBertForSequenceClassification
from .surgery import prune

register_auto_classes()

__all__ = ["compress", "Report", "load_model", "Masks", "prune", "cost_report", "format_report", "macs", "param_counts",
           "PrunekitBertConfig", "PrunekitBertForSequenceClassification", "PrunekitError"]
