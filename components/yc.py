"""The single import of the Yandex Cloud provider SDK.

Every component reaches the provider through ``from components.yc import yandex``. To switch
bridges (for example to a local SDK generated with
``pulumi package add terraform-provider yandex-cloud/yandex``), change the import below and
nothing else; docs/deploying.md ("Why this provider bridge") explains when that is needed.
"""

import pulumi_yandex_marketmaker as yandex

#: Pulumi package name of the bridge; resource type tokens start with it (``yandex:index/...``).
PACKAGE = "yandex"

__all__ = ["PACKAGE", "yandex"]
