"""The command-line reference, docs/cli.md, generated from the commands' own parsers.

    python -m beamml.pipelines._platform.cli_reference --write docs/cli.md   # make docs
    python -m beamml.pipelines._platform.cli_reference --check docs/cli.md   # exit 1 if stale

Which commands. Every command ``beamml --help`` lists (``beamml.pipelines.__main__``'s
``pipelines()``), in its order.

Which flags. Each command's parser is the one ``beamml <command> --help`` prints: the
command is started through beamml's own entry point with ``--help``, and the parser is
caught as it is asked to print its help (nothing else of the command runs). So the page
holds what the user's ``--help`` shows, the flags every command adds (``--config``,
``--anonymous_storage``) and a command's own wording of them (monitor's ``--config``)
included, and needs no list of modules or flags kept here. A command whose ``--help``
is not argparse's (``validate``) gets the line it prints.

What a section holds: the command's one-line description (the first line of its
parser's description), then one table per argument group (the flag with its value's
name, its default or *required*, its help as ``--help`` expands it), then the parser's
epilog. The longer descriptions of ``--help`` (examples, notes) are left out: the
pipeline pages of docs/ say them.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import sys

__all__ = ['commands', 'command_parser', 'render', 'main']

_MAIN = 'beamml.pipelines.__main__'
#: where the generated page lives, relative to the repository's root
PAGE = 'docs/cli.md'


class _Caught(BaseException):
    """Raised from the patched ``print_help`` to stop the command once its parser is seen
    (a BaseException, so that beamml's main wrapper passes it through untouched)."""

    def __init__(self, parser):
        super().__init__()
        self.parser = parser


def commands() -> dict[str, str]:
    """{command: one-line description}, as ``beamml --help`` lists them."""
    return importlib.import_module(_MAIN).pipelines()


def command_parser(name: str) -> tuple[argparse.ArgumentParser | None, str]:
    """(the parser ``beamml <name> --help`` prints, or None, what the command printed
    instead when its help is not argparse's)."""
    main = importlib.import_module(_MAIN).main
    original = argparse.ArgumentParser.print_help

    def catch(self, file=None):
        raise _Caught(self)

    out, err = io.StringIO(), io.StringIO()
    argparse.ArgumentParser.print_help = catch
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([name, '--help'])
            except _Caught as caught:
                return caught.parser, ''
            except SystemExit:
                pass
    finally:
        argparse.ArgumentParser.print_help = original
    return None, out.getvalue().strip()


# --------------------------------------------------------------------------- Markdown

def _escape(text: str) -> str:
    """Text for a Markdown table cell, shown as written."""
    text = text.replace('\\', '\\\\').replace('`', '\\`').replace('*', '\\*')
    text = text.replace('[', '\\[').replace(']', '\\]').replace('|', '\\|')
    text = text.replace('<', '&lt;').replace('>', '&gt;')
    # an underscore starts or ends emphasis only at a word's edge
    return re.sub(r'(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])', r'\\_', text)


def _code(text: str) -> str:
    return '`' + text.replace('|', '\\|') + '`'


def anchor(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    slug = re.sub(r'[^\w\- ]', '', heading.strip().lower())
    return slug.replace(' ', '-')


def _flag(action: argparse.Action) -> str:
    names = ', '.join(action.option_strings)
    if action.nargs == 0:
        return _code(names)
    if action.choices is not None and action.metavar is None:
        value = '{' + ','.join(map(str, action.choices)) + '}'
    else:
        value = action.metavar or action.dest.upper()
    if action.nargs == '?':
        value = f'[{value}]'
    return _code(f'{names} {value}')


def _default(action: argparse.Action) -> str:
    if action.required:
        return '*required*'
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
        return ''
    return _code(str(action.default))


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help:
        return ''
    text = parser._get_formatter()._expand_help(action)
    return _escape(' '.join(text.split()))


def _first_line(text: str | None) -> str:
    lines = (text or '').strip().splitlines()
    return lines[0].strip() if lines else ''


def _section(name: str, description: str) -> list[str]:
    parser, printed = command_parser(name)
    lines = [f'## beamml {name}', '']
    if parser is None:
        lines += [_escape(description), '',
                  f'`beamml {name} --help` prints {_code(" ".join(printed.split()))}', '']
        return lines
    lines += [_escape(_first_line(parser.description) or description), '']
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.option_strings
                   and not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS]
        if not actions:
            continue
        title = group.title if group.title not in ('options', 'optional arguments') else 'flags'
        lines += [f'**{_escape(title)}**', '', '| flag | default | meaning |', '|---|---|---|']
        lines += [f'| {_flag(a)} | {_default(a)} | {_help(parser, a)} |' for a in actions]
        lines.append('')
    if parser.epilog:
        lines += [_escape(' '.join(parser.epilog.split())), '']
    return lines


def render() -> str:
    """The whole page."""
    found = commands()
    lines = [
        '# Command-line reference', '',
        '<!-- Generated from the commands\' parsers by `python -m '
        'beamml.pipelines._platform.cli_reference --write docs/cli.md` (`make docs`); do not edit: tests/test_cli_reference.py fails '
        'when this page is not the generator\'s. -->', '',
        'Every command runs as `beamml <command> [flags]` or `python -m beamml <command> '
        '[flags]`; `beamml <command> --help` prints the same flags (and `-h`). What the '
        'flags do in depth is on each pipeline\'s page ([docs](index.md)); the rules every '
        'command shares (outputs, dead letters, required flags, renamed flags, exit codes) '
        'are [the command-line convention](conventions.md).', '',
        '| command | what it does |', '|---|---|']
    lines += [f'| [`{name}`](#{anchor("beamml " + name)}) | {_escape(desc)} |'
              for name, desc in found.items()]
    lines.append('')
    for name, desc in found.items():
        lines += _section(name, desc)
    return '\n'.join(lines).rstrip('\n') + '\n'


def _stale(path: str, expected: str) -> str | None:
    """One line saying how the page at ``path`` differs from ``expected``, or None."""
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except FileNotFoundError:
        return 'missing'
    if text == expected:
        return None

    def sections(t: str) -> dict[str, str]:
        parts = re.split(r'^(## .*)$', t, flags=re.M)
        return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}

    old, new = sections(text), sections(expected)
    names = [h[3:] for h in new if old.get(h) != new[h]] + \
            [f'{h[3:]} (gone)' for h in old if h not in new]
    return 'differs' + (f' in {", ".join(names)}' if names else ' (its head)')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m beamml.pipelines._platform.cli_reference',
        description=f'Write or check the command-line reference ({PAGE}).')
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument('--write', metavar='FILE', help='write the page there')
    mode.add_argument('--check', metavar='FILE',
                      help='exit 1 when the page there differs from the generator')
    args = parser.parse_args(argv)
    expected = render()
    if args.check:
        diff = _stale(args.check, expected)
        if diff:
            print(f'{args.check}: {diff}: run make docs', file=sys.stderr)
            return 1
        print(f'{args.check}: up to date ({len(commands())} commands)')
        return 0
    with open(args.write, 'w', encoding='utf-8') as f:
        f.write(expected)
    print(f'{args.write}: wrote {len(commands())} commands')
    return 0


if __name__ == '__main__':
    sys.exit(main())
