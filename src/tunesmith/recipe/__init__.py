"""The recipe: one typed home for every setting and default of a tunesmith run.

A recipe is YAML; `load_recipe("recipes/demo.yaml", ["train.lr=3e-4"])` returns a validated
`Recipe`. Every field below has a type, a default and a docstring; stage code reads these and
never invents a default of its own. Unknown keys are errors (with a "did you mean"), and all
problems are reported at once, each naming its YAML key.

    base.py        what every section shares (strict keys, attribute docstrings)
    data.py        data: files, checks, cleaning, dedup, leakage, balance, bias audit
    training.py    model, train, tune
    evaluation.py  eval: metrics, baseline, forgetting, bias probes, benchmarks, judge
    serving.py     serve and monitor
    root.py        Recipe: the sections, and the rules that span them
    loading.py     YAML, overrides, and errors that name the key
"""

from tunesmith.recipe.base import (  # noqa: F401
    CHATML_TEMPLATE,
    FormatName,
)
from tunesmith.recipe.data import (  # noqa: F401
    AugmentConfig,
    BalanceConfig,
    CleanConfig,
    DataBiasConfig,
    DataConfig,
    DedupConfig,
    FilterConfig,
    LeakageConfig,
    PrivacyConfig,
)
from tunesmith.recipe.evaluation import (  # noqa: F401
    BiasConfig,
    EvalConfig,
)
from tunesmith.recipe.loading import (  # noqa: F401
    YAML_HINT,
    apply_overrides,
    dump_recipe,
    format_validation_error,
    load_recipe,
    parse_override,
    read_yaml,
    recipe_from_dict,
)
from tunesmith.recipe.root import (  # noqa: F401
    OutputConfig,
    Recipe,
)
from tunesmith.recipe.serving import (  # noqa: F401
    AlertRule,
    FallbackConfig,
    GuardsConfig,
    MonitorConfig,
    RateLimitConfig,
    ScopeGuardConfig,
    ServeConfig,
    UpstreamConfig,
    VLLMConfig,
)
from tunesmith.recipe.training import (  # noqa: F401
    EarlyStoppingConfig,
    LoraConfig,
    ModelConfig,
    ParamSpace,
    TrainConfig,
    TuneConfig,
)
