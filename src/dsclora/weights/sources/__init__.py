"""Where networks come from, tried in this order by ``weights.load``: our SPAN loader (``span``), model spec
files for any network given as Python code plus weights (``specfile``), and spandrel's architecture detection
(``spandrel``, an optional extra). Each turns what it reads into a ``ModelDescriptor`` and knows how to save a
network of its kind in that kind's own format."""
