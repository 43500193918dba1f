"""Shell-style globs on tensor names (``*``, ``?``, ``[...]``), matched in linear time.

The meaning is Python's `fnmatch.fnmatchcase` (case-sensitive; ``*`` and
``?`` match any character, newline included; ``[seq]``, ``[!seq]``, ranges
``a-z``; a ``]`` right after the opening bracket or ``!`` is a member; a
``[`` with no closing ``]`` is a literal ``[``; no quoting), but not its
cost.  `fnmatch` translates a pattern to a regular expression in time
quadratic in the number of unclosed ``[`` (it looks for the ``]`` again from
each one) and caches up to 32,768 compiled patterns per process; a name
given as a request field then costs minutes and leaves megabytes behind.

Here `compile_glob` parses the pattern once, in time linear in its length
(up to a sort of each class's ranges), into a sequence of atoms: ``*``, or
a set of characters (a literal, ``?``, a class).  `Glob.matches` then runs
the pattern as a nondeterministic automaton over the name, one bit per
atom in a Python integer (the "shift-and" method of Baeza-Yates and Gonnet,
CACM 35(10), 1992, with a self-loop for each ``*``): each character of the
name costs a few integer operations on a number of ``atoms + 1`` bits, and
each distinct character one pass over the atoms, so a match costs
O(len(name) × len(pattern)) at worst (in machine words, not Python steps,
for all but the distinct characters), and a state that dies stops it early.
Nothing is cached past the `Glob` object itself, and that holds at most a
few MiB.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

__all__ = ["Glob", "compile_glob", "glob_matches"]

_MAX_CODE_POINT = 0x10FFFF
#: an atom that matches any one character (``?``, and ``[!...]`` of an empty range)
_ANY: tuple[tuple[int, int], ...] = ((0, _MAX_CODE_POINT),)
#: most bits of accepting masks a `Glob` remembers (4 MiB)
_REMEMBERED_BITS = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Glob:
    """A compiled glob: `matches` says whether a whole name matches it.

    Bit ``j`` (1-based) of the automaton's state stands for "the name so
    far matches the pattern's first ``j`` atoms"; bit 0 for the empty prefix.
    """

    pattern: str
    #: the pattern when it holds no wildcard at all (then a match is equality)
    literal: str | None
    #: number of atoms; bit `atom_count` set at the end means a match
    atom_count: int
    #: bits of the ``*`` atoms, and of the ``?`` atoms (any one character)
    star_bits: int
    any_bits: int
    #: the atoms of each literal character
    literal_atoms: dict[str, tuple[int, ...]]
    #: the class atoms: (atom, its sorted disjoint code-point ranges)
    class_atoms: tuple[tuple[int, tuple[tuple[int, int], ...]], ...]
    #: the fewest characters a matching name has (its non-star atoms)
    min_length: int
    _accepting: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def _bits_for(self, character: str) -> int:
        """The bits of the atoms that accept `character`, in time linear in the pattern's length.

        Remembered while the table stays small (a few MiB), so a name of a
        million distinct characters, or a pattern of a million atoms, costs
        time linear in each, never memory quadratic in them.
        """
        bitmap = bytearray(self.atom_count // 8 + 1)
        for atom in self.literal_atoms.get(character, ()):
            bitmap[atom >> 3] |= 1 << (atom & 7)
        code = ord(character)
        for atom, ranges in self.class_atoms:
            index = bisect.bisect_right(ranges, (code, _MAX_CODE_POINT)) - 1
            if index >= 0 and ranges[index][0] <= code <= ranges[index][1]:
                bitmap[atom >> 3] |= 1 << (atom & 7)
        bits = int.from_bytes(bitmap, "little") | self.any_bits
        if (len(self._accepting) + 1) * (self.atom_count + 64) <= _REMEMBERED_BITS:
            self._accepting[character] = bits
        return bits

    def matches(self, name: str) -> bool:
        """Whether all of `name` matches the pattern (as ``fnmatch.fnmatchcase(name, pattern)``)."""
        if self.literal is not None:
            return name == self.literal
        if len(name) < self.min_length or (not self.star_bits and len(name) != self.min_length):
            return False
        star, final = self.star_bits, 1 << self.atom_count
        state = 1 | (2 & star)  # the empty prefix, and a leading `*` that has matched nothing yet
        remembered, bits_for = self._accepting.get, self._bits_for
        for character in name:
            accepting = remembered(character)
            if accepting is None:
                accepting = bits_for(character)
            state = ((state << 1) & accepting) | (state & star)
            state |= (state << 1) & star  # a `*` may match nothing: reached as soon as the atom before it is
            if not state:
                return False
        return bool(state & final)


def glob_matches(name: str, pattern: str) -> bool:
    """`fnmatch.fnmatchcase(name, pattern)` in linear time (`compile_glob` once to match many names)."""
    return compile_glob(pattern).matches(name)


def compile_glob(pattern: str) -> Glob:
    """Parse `pattern` into the automaton `Glob.matches` runs (time linear in its length, up to a sort)."""
    atoms: list[tuple[tuple[int, int], ...] | None] = []  # None is a `*`
    position, length = 0, len(pattern)
    wildcard = False
    # where the last search for a class's closing `]` started, and what it found (-1: none after it);
    # every later `[` reuses it, so a run of unclosed `[` costs one search, not one each
    searched_from, closing = -1, -1
    while position < length:
        character = pattern[position]
        position += 1
        if character == "*":
            wildcard = True
            if not atoms or atoms[-1] is not None:
                atoms.append(None)
        elif character == "?":
            wildcard = True
            atoms.append(_ANY)
        elif character == "[":
            start = position  # fnmatch: a `!` and then a `]` right after the bracket are members, not its end
            search = start + 1 if start < length and pattern[start] == "!" else start
            if search < length and pattern[search] == "]":
                search += 1
            if searched_from < 0 or search < searched_from or (closing >= 0 and search > closing):
                searched_from, closing = search, pattern.find("]", search)
            if closing < 0:
                atoms.append(((ord("["), ord("[")),))
                continue
            wildcard = True
            atoms.append(_class_ranges(pattern[start:closing]))
            position = closing + 1
        else:
            atoms.append(((ord(character), ord(character)),))
    literal = None if wildcard else pattern
    return _automaton(pattern, literal, atoms)


def _class_ranges(content: str) -> tuple[tuple[int, int], ...]:
    """The characters a class ``[content]`` matches, as sorted disjoint code-point ranges.

    Follows `fnmatch.translate` step by step: the content is cut into chunks
    at each ``-`` that joins two characters into a range (a ``-`` first,
    last, or right after a range is a member), an empty range (``z-a``) is
    dropped with its two ends, and the rest is read as a regular-expression
    set would read it.  Each step keeps the time linear in the content.
    """
    negated = content.startswith("!")
    if "-" not in content:
        members = content[1:] if negated else content
        singles = [(ord(c), ord(c)) for c in members]
        return _complement(singles) if negated else _merged(singles)
    chunks: list[str] = []
    begin = 0
    search = 2 if negated else 1
    while True:
        hyphen = content.find("-", search)
        if hyphen < 0:
            break
        chunks.append(content[begin:hyphen])
        begin = hyphen + 1
        search = hyphen + 3
    if begin < len(content):
        chunks.append(content[begin:])
    else:
        chunks[-1] += "-"
    tokens = _without_empty_ranges(chunks)
    if not negated and tokens and tokens[0] == "!":
        negated = True  # fnmatch reads a `!` that an empty range removed from the front left first as negation
    if negated:
        tokens = tokens[1:]  # the `!`, which stays first through every merge (the first chunk holds 2+ chars)
        if not tokens:
            return _ANY  # fnmatch: a negated empty range matches any character
    elif not tokens:
        return ()  # an empty range matches nothing
    return _complement(_set_ranges(tokens)) if negated else _merged(_set_ranges(tokens))


#: a token of a class's body: a member character, or (None) a ``-`` that joins two chunks into a range
_Token = str | None


def _without_empty_ranges(chunks: list[str]) -> list[_Token]:
    """fnmatch's chunks, right to left, with each range whose ends are out of order removed with its ends
    (``chunks[k-1][:-1] + chunks[k][1:]``), as tokens: characters, and None for a joining ``-``.

    The merged chunk is kept reversed, so that dropping its first character and
    putting the next chunk before it cost the length of that chunk, not of the merge.
    """
    reversed_tokens: list[_Token] = list(reversed(chunks[-1]))  # the current rightmost chunk, reversed
    for index in range(len(chunks) - 2, -1, -1):
        left = chunks[index]
        if reversed_tokens and reversed_tokens[-1] is not None and left[-1] > reversed_tokens[-1]:
            reversed_tokens.pop()
            reversed_tokens.extend(reversed(left[:-1]))
        else:
            reversed_tokens.append(None)
            reversed_tokens.extend(reversed(left))
    return list(reversed(reversed_tokens))


def _set_ranges(tokens: list[_Token]) -> list[tuple[int, int]]:
    """Read a set's body as Python's regular-expression parser does: ``a-b`` (a joining ``-`` between two
    members) is a range, any other character (a ``-`` too) a member."""
    ranges: list[tuple[int, int]] = []
    index, count = 0, len(tokens)
    while index < count:
        low = tokens[index]
        low_code = ord("-") if low is None else ord(low)
        index += 1
        if index + 1 < count and tokens[index] is None:
            high = tokens[index + 1]
            high_code = ord("-") if high is None else ord(high)
            index += 2
            if high_code >= low_code:  # out of order here only where fnmatch's own pattern fails to compile
                ranges.append((low_code, high_code))
            continue
        if index < count and tokens[index] is None:  # a `-` before the closing bracket: a member
            ranges.append((ord("-"), ord("-")))
            index += 1
        ranges.append((low_code, low_code))
    return ranges


def _merged(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Sorted, disjoint, non-adjacent ranges covering the same code points."""
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            if high > merged[-1][1]:
                merged[-1] = (merged[-1][0], high)
        else:
            merged.append((low, high))
    return tuple(merged)


def _complement(ranges: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """The code points outside `ranges`."""
    gaps: list[tuple[int, int]] = []
    next_low = 0
    for low, high in _merged(ranges):
        if low > next_low:
            gaps.append((next_low, low - 1))
        next_low = high + 1
    if next_low <= _MAX_CODE_POINT:
        gaps.append((next_low, _MAX_CODE_POINT))
    return tuple(gaps)


def _automaton(pattern: str, literal: str | None, atoms: list[tuple[tuple[int, int], ...] | None]) -> Glob:
    """The `Glob` of `atoms`: the ``*`` and ``?`` atoms as bit masks, the literal and class atoms by position."""
    star_map, any_map = bytearray(len(atoms) // 8 + 1), bytearray(len(atoms) // 8 + 1)
    literal_atoms: dict[str, list[int]] = {}
    class_atoms: list[tuple[int, tuple[tuple[int, int], ...]]] = []
    for index, ranges in enumerate(atoms, start=1):
        if ranges is None:
            star_map[index >> 3] |= 1 << (index & 7)
        elif ranges == _ANY:
            any_map[index >> 3] |= 1 << (index & 7)
        elif len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
            literal_atoms.setdefault(chr(ranges[0][0]), []).append(index)
        else:
            class_atoms.append((index, ranges))
    return Glob(pattern=pattern, literal=literal, atom_count=len(atoms),
                star_bits=int.from_bytes(star_map, "little"), any_bits=int.from_bytes(any_map, "little"),
                literal_atoms={character: tuple(indices) for character, indices in literal_atoms.items()},
                class_atoms=tuple(class_atoms), min_length=sum(atom is not None for atom in atoms))
