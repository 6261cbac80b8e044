#!/usr/bin/env python3
"""Self-test of check_layers.py on small fake trees: each violation kind is caught."""
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_layers  # noqa: E402


def tree(files):
    root = tempfile.mkdtemp(prefix="keel-layers-")
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return root


BASE = {
    "common/include/keel/result.h": "#pragma once\n",
    "fpga/include/keel/fpga/card.h": '#include "keel/result.h"\n',
    "drivers/nvme/include/keel/drivers/nvme/controller.h": '#include "keel/fpga/card.h"\n',
    "sriov/include/keel/sriov/pf_manager.h": '#include "keel/fpga/card.h"\n',
    "vmm_glue/src/paravisor.cpp": '#include "keel/drivers/nvme/controller.h"\n#include <vector>\n',
    "vmm_glue/src/local.h": "#pragma once\n",
    "vmm_glue/src/worker.cpp": '#include "local.h"\n#include <keel/regs/keel_regs.h>\n',
    "apps/daemon.cpp": '#include "keel/vmm/anything.h"\n',
}


class CheckLayers(unittest.TestCase):
    def errors(self, extra):
        _, errors = check_layers.check(tree({**BASE, **extra}))
        return errors

    def test_clean_tree_passes(self):
        self.assertEqual(self.errors({}), [])

    def test_lower_layer_including_higher_fails(self):
        errors = self.errors({"common/src/bad.cpp": '#include "keel/fpga/card.h"\n'})
        self.assertEqual(len(errors), 1)
        self.assertIn("common/src/bad.cpp:1", errors[0])
        self.assertIn("above", errors[0])

    def test_sibling_at_same_rank_fails(self):
        errors = self.errors({"drivers/nvme/src/x.cpp": '#include "keel/sriov/pf_manager.h"\n'})
        self.assertEqual(len(errors), 1)
        self.assertIn("beside", errors[0])

    def test_card_access_including_generated_regs_passes_and_common_fails(self):
        self.assertEqual(self.errors({"fpga/src/x.cpp": "#include <keel/regs/keel_regs.h>\n"}), [])
        self.assertEqual(len(self.errors({"common/src/x.cpp": "#include <keel/regs/keel_regs.h>\n"})), 1)

    def test_unknown_keel_header_fails(self):
        errors = self.errors({"drivers/nvme/src/x.cpp": '#include "keel/nowhere/x.h"\n'})
        self.assertEqual(len(errors), 1)
        self.assertIn("no layer owns", errors[0])

    def test_file_outside_every_layer_fails(self):
        errors = self.errors({"newlib/src/x.cpp": "#include <vector>\n"})
        self.assertEqual(len(errors), 1)
        self.assertIn("in no layer", errors[0])


if __name__ == "__main__":
    unittest.main()
