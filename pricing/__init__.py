"""The Yandex Cloud price book (``yandex-cloud.yaml`` beside this package), the cost model over a
stack's resources and the Billing API refresh of the book."""
