"""Errors about named arguments, worded in the library's terms.

An :class:`ArgumentError` names the arguments it is about through ``{name}``
fields of its message: ``str(e)`` says ``range_max=64 ...`` (the library's
keyword), :meth:`ArgumentError.render` with ``prefix="--"`` says
``--range_max=64 ...``, which is what the command line prints. The command
line adds the ``--`` there and nowhere else.
"""

from __future__ import annotations


class ArgumentError(ValueError):
    """A bad value of one or more named arguments (options, run fields, flags).

    Args:
      template: the message, with ``{name}`` for each argument it names and other
        ``{field}`` placeholders filled from ``values``.
      names: the argument names the template refers to.
      values: the other fields of the template.
    """

    def __init__(self, template: str, names: tuple[str, ...] | str = (), **values):
        self.template = template
        self.names = (names,) if isinstance(names, str) else tuple(names)
        self.values = values
        clash = set(self.names) & set(values)
        if clash:
            raise TypeError(f"ArgumentError: {sorted(clash)} is both an argument name and a value")
        super().__init__(self.render())

    def render(self, prefix: str = "") -> str:
        """The message with every argument name preceded by ``prefix`` (also in the
        errors it quotes)."""
        values = {
            k: render(v, prefix) if isinstance(v, BaseException) else v
            for k, v in self.values.items()
        }
        return self.template.format(**values, **{n: prefix + n for n in self.names})


def about(name: str, problem: str) -> ArgumentError:
    """``name: <problem>`` (the problem is text, not a template)."""
    return ArgumentError("{" + name + "}: {problem}", name, problem=problem)


def argument_error(name: str, problem: str) -> ArgumentError:
    """``name <problem>``: an error about one argument (braces in problem are kept)."""
    return ArgumentError("{" + name + "} {problem}", name, problem=problem)


def value_error(name: str, value, problem: str) -> ArgumentError:
    """``name=value <problem>``."""
    return ArgumentError("{" + name + "}={value} {problem}", name, value=value, problem=problem)


def render(error: BaseException, prefix: str = "") -> str:
    """The message of any error, argument names preceded by ``prefix`` where it names them."""
    if isinstance(error, ArgumentError):
        return error.render(prefix)
    return str(error)
