"""Stand-ins for the demo and the tests; the node does not use them in production.

* :mod:`~dicom_node.standins.synthetic` writes synthetic tomosynthesis exams (and their
  ground-truth SEG) as the modality would send them, placed in the patient by
  :mod:`~dicom_node.standins.geometry`;
* :mod:`~dicom_node.standins.archive` is a minimal local archive standing in for the PACS;
* :mod:`~dicom_node.standins.preview` renders PNG previews of results;
* :mod:`~dicom_node.standins.dciodvfy` runs the dicom3tools validator on written objects.
"""
