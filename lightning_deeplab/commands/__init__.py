"""The ``deeplab`` command and its subcommands: :mod:`.main` dispatches, :mod:`.cli` runs the
Trainer's commands through LightningCLI, the others are one command each (`crf`, `crf-search`,
`build-kernels`, and the offline demo). Nothing below this package imports it."""
