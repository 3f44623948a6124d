"""``beamml evaluate --task classification``: the flags and graph of multiclass, weighted and
scored classification, and of Poisson-bootstrap confidence intervals.

Without any of these flags, classification is today's binary path unchanged
(:class:`~beamml.transforms.metrics.ParsePredictionLogs` and the binary metrics). With one
of them (:func:`active`), rows are parsed by
:class:`~beamml.transforms.metrics.class_logs.ParseClassificationLogs` and measured by the
metrics of :mod:`beamml.transforms.metrics.classification`, through the same
``ComputeMetrics`` (one pass, overall and per slice, batch and streaming windows).
"""
from __future__ import annotations

from beamml.pipelines._platform.values import Integer, Number, non_negative_int
from beamml.transforms.core.errors import BeammlError
from beamml.transforms.metrics.class_logs import ClassificationColumns, ParseClassificationLogs
from beamml.transforms.metrics.classification import (MULTICLASS_METRICS, SCORE_METRICS,
                                                      ConfusionMatrix)
from beamml.transforms.metrics.query_bootstrap import QueryIntervals, is_query_mean

__all__ = ['add_args', 'active', 'check_task', 'metric_list', 'query_intervals',
           'parse_transform', 'log_columns']

AVERAGES = ('binary', 'micro', 'macro', 'weighted', 'none')
#: the flags that switch classification to this path (dest: its "not given" value)
FLAGS = {'average': None, 'beta': None, 'pos_label': None, 'weight_column': None,
         'score_column': None, 'probability_columns': None, 'confidence_intervals': None}
num_bootstrap_type = Integer(2)


def add_args(parser) -> None:
    """The flags of multiclass / weighted / scored classification and of intervals."""
    g = parser.add_argument_group('classification: multiclass, weights, scores, intervals')
    g.add_argument('--average', choices=AVERAGES, default=None,
                   help='classification: how precision, recall, f1, fbeta (and roc_auc, '
                        'average_precision of class probabilities) average over classes, as '
                        "scikit-learn's average= ('none': one value per class); labels are "
                        "then class names. Default: binary, the class --pos_label")
    g.add_argument('--beta', type=Number(0), default=None,
                   help='classification: the beta of fbeta (default 1)')
    g.add_argument('--pos_label', default=None,
                   help='classification: the positive class of --average binary and '
                        '--score_column (default 1; labels are then class names)')
    g.add_argument('--weight_column', default=None,
                   help="classification: a column of row weights (scikit-learn's "
                        'sample_weight), finite numbers >= 0')
    # --score_column: evaluate's own flag (ranking orders a run by it too)
    g.add_argument('--probability_columns', default=None, metavar='CLASS=COLUMN,...',
                   help='classification: the column of each class probability (one-vs-rest '
                        'roc_auc, average_precision; log_loss; reliability per class)')
    g.add_argument('--reliability_bins', type=Integer(1), default=10,
                   help='classification: bins of the reliability table (default 10)')
    g.add_argument('--confidence_intervals', choices=['poisson_bootstrap'], default=None,
                   help='lower, upper and standard error of every metric and slice, '
                        "by TFMA's Poisson bootstrap (rows resampled; for ranking, queries)")
    g.add_argument('--num_bootstrap', type=num_bootstrap_type, default=None,
                   help='bootstrap replicates (default 100; with --confidence_intervals only)')
    g.add_argument('--random_state', type=non_negative_int, default=None,
                   help='seed of the bootstrap weights (default 0; with '
                        '--confidence_intervals only)')
    g.add_argument('--confidence_level', type=Number(0, 1, exclusive=True), default=None,
                   help='level of the bootstrap intervals (default 0.95; with '
                        '--confidence_intervals only)')


def active(args) -> bool:
    """Whether classification goes this way (one of :data:`FLAGS` given, or --metrics
    names a metric of this path only)."""
    if getattr(args, 'task', None) != 'classification':
        return False
    names = {n.strip() for n in (getattr(args, 'metrics', None) or '').split(',')}
    new_only = (set(MULTICLASS_METRICS) | set(SCORE_METRICS)) - {
        'accuracy', 'precision', 'recall', 'f1'}
    return any(getattr(args, k, None) is not None for k in FLAGS) or bool(names & new_only)


#: The bootstrap's flags and their defaults: given without --confidence_intervals, an error.
INTERVAL_FLAGS = {'num_bootstrap': 100, 'random_state': 0, 'confidence_level': 0.95}


def check_task(args) -> None:
    """These flags are for --task classification (but --confidence_intervals, and
    --score_column, which ranks a ranking run): a ranking run with one is an error. The
    bootstrap's flags need --confidence_intervals; those not given take their defaults."""
    given = getattr(args, 'interval_flags_given', None)
    if given is None:   # the first call: note what the user gave, then fill in defaults
        given = [k for k in INTERVAL_FLAGS if getattr(args, k, None) is not None]
        args.interval_flags_given = given
        for k, default in INTERVAL_FLAGS.items():
            if getattr(args, k, None) is None:
                setattr(args, k, default)
    if given and not getattr(args, 'confidence_intervals', None):
        raise BeammlError(f'{", ".join("--" + k for k in given)}: only with '
                          '--confidence_intervals poisson_bootstrap')
    if getattr(args, 'task', None) == 'ranking':
        given = [f'--{k}' for k in FLAGS if getattr(args, k, None) is not None
                 and k not in ('confidence_intervals', 'score_column')]
        if given:
            raise BeammlError(f'{", ".join(given)}: for --task classification only')


def probability_columns(args) -> tuple[tuple[str, str], ...]:
    """(class, column) pairs of --probability_columns."""
    if not args.probability_columns:
        return ()
    pairs = []
    for part in args.probability_columns.split(','):
        if not part.strip():
            continue
        cls, eq, col = part.partition('=')
        if not eq or not cls.strip() or not col.strip():
            raise BeammlError(f'--probability_columns: {part!r} is not CLASS=COLUMN')
        pairs.append((cls.strip(), col.strip()))
    classes = [c for c, _ in pairs]
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise BeammlError('--probability_columns needs two or more distinct classes, got '
                          f'{", ".join(classes) or "none"}')
    return tuple(pairs)


def label_mode(args) -> str:
    """'binary' (today's 0/1, true/false labels, classes '0' and '1') or 'classes'."""
    if (args.average in (None, 'binary') and args.pos_label is None
            and not args.probability_columns):
        return 'binary'
    return 'classes'


def metric_list(args, names: list[str], zero_division: float) -> list:
    """The Metric objects of the flags on this path (``names``: of --metrics, [] for all)."""
    if args.score_column and args.probability_columns:
        raise BeammlError('--score_column and --probability_columns exclude each other')
    pairs = probability_columns(args)
    scored = bool(args.score_column or pairs)
    registry = {**MULTICLASS_METRICS, **SCORE_METRICS}
    if not names:
        names = [n for n in MULTICLASS_METRICS if n != 'fbeta' or args.beta is not None]
        names += list(SCORE_METRICS) if scored else []
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise BeammlError(f'unknown --metrics {", ".join(unknown)} for --task classification; '
                          f'one or more of {", ".join(registry)}')
    if not scored and any(n in SCORE_METRICS for n in names):
        raise BeammlError(f'--metrics {", ".join(n for n in names if n in SCORE_METRICS)} '
                          'need --score_column or --probability_columns')
    average = args.average or 'binary'
    pos_label = args.pos_label if args.pos_label is not None else '1'
    if pairs and average == 'binary' and pos_label not in [c for c, _ in pairs]:
        raise BeammlError(f'--pos_label {pos_label!r} is not one of the classes of '
                          '--probability_columns (or choose another --average)')
    common = dict(zero_division=zero_division,
                  confidence_level=args.confidence_level)
    out = []
    for n in dict.fromkeys(names):
        cls = registry[n]
        if n in SCORE_METRICS:
            out.append(cls(classes=[c for c, _ in pairs] or None, average=average,
                           pos_label=pos_label, n_bins=args.reliability_bins, **common))
        else:
            m = cls(average=average, beta=args.beta if args.beta is not None else 1.0,
                    pos_label=pos_label, **common)
            if isinstance(m, ConfusionMatrix):
                m.weighted = bool(args.weight_column)
            out.append(m)
    return out


def query_intervals(args, metrics: list, zero_division: float) -> list:
    """Ranking: [QueryIntervals] of the metrics that are means over queries (the older
    ranking metrics and trec_eval's measures), with --confidence_intervals (queries
    resampled), else []."""
    if not args.confidence_intervals:
        return []
    names = [m.name for m in metrics if is_query_mean(m.name)]
    if not names:
        return []
    return [QueryIntervals(names, args.cutoff, num_bootstrap=args.num_bootstrap,
                           random_state=args.random_state,
                           confidence_level=args.confidence_level, zero_division=zero_division)]


def log_columns(args) -> list[tuple[str, str]]:
    """(log column, flag) of the columns this path reads beyond truth and prediction."""
    cols = [(c, flag) for c, flag in ((args.weight_column, '--weight_column'),
                                      (args.score_column, '--score_column')) if c]
    return cols + [(c, '--probability_columns') for _, c in probability_columns(args)]


def parse_transform(args, columns: dict, slice_by, input_format) -> ParseClassificationLogs:
    """The parser of this path's rows."""
    spec = ClassificationColumns(
        truth=columns['truth'], prediction=columns['prediction'], labels=label_mode(args),
        weight=args.weight_column, score=args.score_column,
        probabilities=probability_columns(args),
        num_bootstrap=args.num_bootstrap if args.confidence_intervals else 0,
        random_state=args.random_state, slice_by=tuple(slice_by),
        keys='content' if (getattr(args, 'input_subscription', None)
                           or getattr(args, 'input_topic', None)) else 'file')
    return ParseClassificationLogs(spec, input_format)
