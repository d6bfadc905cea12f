"""``make bench``: the issuer under load, beside the ceilings it is judged against.

Not part of the package nor of its tests: this is tooling that starts real ``issuer
serve`` processes and drives them with wrk. Run it with ``make bench`` (or
``python -m bench.run``); see the README's "Performance" section.
"""
