"""A folder of one's own images, embedded once into an index on disk, then searched and cleaned.

  index.py   the on-disk format: index.json (the commit point), embeddings (memory-mapped) and the
             manifest of each row's file; CollectionIndex reads it, IndexWriter writes it
  build.py   update_index: only new or changed files embedded, removed ones dropped, unreadable
             ones skipped and listed, progress committed every 512 images
  search.py  the top-k rows for a query embedding, in chunks of rows
  clean.py   near-duplicate pairs above a threshold (in blocks: never N x N at once), the rows
             least like a description or the collection's mean direction
  pages.py   an HTML page of images and captions
  report.py  what eval.py --images does

It stands on jclip.api (a model is a jclip.Model); jclip.api does not import it.
"""
